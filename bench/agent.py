"""Voice-agent latency: end of speech → reply audio, onset → StopAudio, the pipeline's share.

Per caller utterance: end of caller speech → first agent audio, speech onset → StopAudio during
barge-in, and the pipeline's own share of each reply.

Processes started here, all on this machine: a private, empty ``redis-server`` (or the Redis at
``--redis-url``, under a fresh ``CS_PREFIX``), one ``callstream gateway``, one ``callstream
worker transcribe`` and one ``callstream worker agent`` (the sample flow, Piper's voice) —
processes, as deployed, so that no GIL is shared with the emulator. Calls are placed one at a
time from this process by the emulator (``callstream.simulate``), which measures per caller
utterance (:mod:`callstream.emulator.turns`):

* **reply** — the utterance's last speech frame sent → the first agent audio frame received;
* **stop** — when the caller talked over the agent: the first speech frame sent → StopAudio.

Callers, spoken by Piper:

* **conversation** calls (mixed and unmixed in turn): after the greeting has played, lines the
  sample flow answers (cancel, refund, change of address, router), each after the previous
  answer has played;
* **barge-in** calls (``--barge-in`` unmixed, and as many mixed): a long sentence starting
  0.8–1.4 s into the ~3 s greeting.

Every reply is then taken apart with wall-clock timestamps (epoch ms; every process reads the
same clock): the emulator's send time of the last speech frame → that frame's entry in the
call's in stream (its id: Redis's clock at XADD) = **inbound**; → the final transcript's entry
in the events stream = **transcriber** (VAD hangover, recogniser, its read); → the agent began
handling it (``agent.turn``'s ``heard_at_ms``) = **agent hop**; → the agent wrote its first
audio (``first_audio_at_ms``) = **agent work** (dialog, first-sentence synthesis); → the
emulator received the first frame = **outbound**, split at the audio's entry in the out stream
into the agent's **write** and the **egress** (its read, pacing, the socket; the bench tails
both streams during the call, as workers and egress trim them behind them). The pipeline's
share is inbound + agent hop + outbound; the rest of the reply is compute. Fields an agent
does not publish yet are reported as n/a.

Barge-in: onset → the first StopAudio is printed as measured, and minus the agent's
``hold_ms`` (the voice it waits for before it holds its audio: detection, not pipeline).

The baseline in the same run: a bare XADD → blocked XREAD round trip on the same Redis, from
this process, before and after the calls — what one hop costs on this machine right now.

    python -m bench agent --calls 2 --barge-in 4 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from bench import servers
from bench.echo import private_redis
from bench.ingest import cleanup
from callstream.emulator.turns import Turn
from callstream.shared.audio import Mode, frame_bytes_for
from callstream.shared.entries import StreamEntries, XReadReply
from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.simulate import CallResult, simulate
from callstream.speech import piper_available, piper_speak

RATE = 16000
FRAME_MS = 20
TICKS_PER_MS = 10_000  # transcript offsets: 100-ns ticks from the call's start
FIRST_LINE_S = 4.5  # the greeting (~2.8 s of audio) has played by then
ANSWER_ROOM_S = 10.0  # after a line: reply latency + the longest answer (~7.2 s) + margin
LINES = (
    "please cancel my order",
    "I want a refund for my last payment",
    "I need to change my address",
    "my internet is not working",
)
BARGE_IN_AT_S = (1.0, 0.8, 1.2, 1.4)  # the caller starts this far into the call, in turn
BARGE_IN_LINE = (
    "hello i would like to cancel my subscription because i am moving to another country next month"
)
VAD_HANGOVER_MS = 500
START_TIMEOUT_S = 120.0  # the agent loads its voice before it serves
DONE_TIMEOUT_S = 60.0
BASELINE_ROUNDS = 200

# The targets on this machine type.
TARGET_SHARE_P95_MS = 30.0
TARGET_STOP_P95_MS = 300.0
TARGET_REPLY_P50_MS = 800.0


# --------------------------------------------------------------------------- the version


MEASURED_PATHS = (
    "workers/agent",
    "workers/transcribe.py",
    "workers/runtime.py",
    "egress",
    "ingress",
)


def code_version() -> str:
    """The commit, and the files under the measured paths that differ from it (with a hash of
    their contents now: the agent and the egress change while benches run)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", *argv], cwd=root, capture_output=True, text=True, check=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.rstrip()

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown commit"
    changed = []
    for line in git("status", "--porcelain", "--", *MEASURED_PATHS).splitlines():
        path = line[3:]
        try:
            with open(os.path.join(root, path), "rb") as source:
                digest = hashlib.sha256(source.read()).hexdigest()[:10]
        except OSError:
            digest = "-"
        changed.append(f"{line[:2].strip()} {path} ({digest})")
    return head + ("" if not changed else " + uncommitted: " + ", ".join(changed))


# --------------------------------------------------------------------------- the callers


@dataclass(frozen=True)
class Script:
    kind: str  # "conversation", "barge-in" or "warm-up"
    mode: Mode
    audio: bytes


def _frames(audio: bytearray) -> bytes:
    audio += bytes(-len(audio) % frame_bytes_for(RATE))
    return bytes(audio)


def conversation(lines: Sequence[bytes]) -> bytes:
    """Silence through the greeting, then each line with room for its answer after it."""
    audio = bytearray(int(FIRST_LINE_S * RATE) * 2)
    for line in lines:
        audio += line + bytes(int(ANSWER_ROOM_S * RATE) * 2)
    return _frames(audio)


def barge_in(line: bytes, at_s: float) -> bytes:
    """The line ``at_s`` into the call, over the greeting; then room for the answer."""
    audio = bytearray(int(at_s * RATE) * 2) + line
    audio += bytes(int(ANSWER_ROOM_S * RATE) * 2)
    return _frames(audio)


def scripts(calls: int, barge_ins: int, warmup: bool) -> list[Script]:
    lines = [piper_speak(text, RATE) for text in LINES]
    long_line = piper_speak(BARGE_IN_LINE, RATE)
    out = [Script("warm-up", "mixed", conversation(lines[:1]))] if warmup else []
    modes: tuple[Mode, Mode] = ("mixed", "unmixed")
    out += [Script("conversation", modes[i % 2], conversation(lines)) for i in range(calls)]
    for mode in ("unmixed", "mixed"):
        out += [
            Script("barge-in", mode, barge_in(long_line, BARGE_IN_AT_S[i % len(BARGE_IN_AT_S)]))
            for i in range(barge_ins)
        ]
    return out


# --------------------------------------------------------------------------- what a call left


@dataclass
class Measured:
    """One caller utterance, the emulator's latency and, for a reply, its breakdown (ms)."""

    call: str
    kind: str
    mode: str
    index: int
    speech_ms: float
    talked_over: bool
    reply_ms: float | None
    stop_ms: float | None
    intent: str | None = None
    text: str = ""
    inbound_ms: float | None = None
    transcriber_ms: float | None = None
    agent_hop_ms: float | None = None
    agent_work_ms: float | None = None
    outbound_ms: float | None = None
    write_ms: float | None = None  # of outbound: first_audio_at_ms → its out-stream entry
    egress_ms: float | None = None  # of outbound: that entry → the frame received
    synthesis_ms: float | None = None  # agent.turn's first_audio_ms: first sentence synthesised
    onset_to_speech_started_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def share_ms(self) -> float | None:
        hops = (self.inbound_ms, self.agent_hop_ms, self.outbound_ms)
        if any(h is None for h in hops):
            return None
        return sum(cast(float, h) for h in hops)

    @property
    def compute_ms(self) -> float | None:
        share = self.share_ms
        return None if share is None or self.reply_ms is None else self.reply_ms - share


def _entry_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def _number(data: Mapping[str, Any], name: str) -> float | None:
    value = data.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _tick_span(event: Event) -> tuple[int, int] | None:
    offset, duration = event.data.get("offset"), event.data.get("duration")
    if not isinstance(offset, int) or not isinstance(duration, int):
        return None
    start_ms = offset // TICKS_PER_MS
    return start_ms // FRAME_MS, (start_ms + duration // TICKS_PER_MS) // FRAME_MS


def measure(
    script: Script,
    result: CallResult,
    streams: tuple[Sequence[int], Sequence[int]],
    events: Sequence[tuple[int, Event]],
) -> list[Measured]:
    """Each of the call's utterances, its reply taken apart (see the module docstring);
    ``streams`` holds the ms of the audio entries of the call's in and out streams."""
    by_id = {event.id: (ms, event) for ms, event in events}
    agent_turns = [e for _, e in events if e.type == "agent.turn" and e.data.get("reply_to")]
    started = [(ms, e) for ms, e in events if e.type == "speech.started"]
    out = []
    for index, turn in enumerate(result.turns):
        row = Measured(
            result.call_id,
            script.kind,
            script.mode,
            index + 1,
            turn.speech_ms,
            turn.talked_over,
            turn.reply_ms,
            turn.stop_ms,
        )
        onset_wall = result.started_at_ms + turn.onset_s * 1000
        later = [ms for ms, _ in started if ms >= onset_wall - FRAME_MS]
        if later:
            row.onset_to_speech_started_ms = later[0] - onset_wall
        if turn.reply_ms is not None:
            _take_apart(
                row,
                turn,
                result=result,
                streams=streams,
                by_id=by_id,
                agent_turns=agent_turns,
            )
        out.append(row)
    return out


def _take_apart(
    row: Measured,
    turn: Turn,
    *,
    result: CallResult,
    streams: tuple[Sequence[int], Sequence[int]],
    by_id: Mapping[str, tuple[int, Event]],
    agent_turns: Sequence[Event],
) -> None:
    assert turn.reply_ms is not None
    audio_ids_ms, out_ids_ms = streams
    end_wall = result.started_at_ms + turn.end_s * 1000
    arrived_wall = end_wall + turn.reply_ms
    in_ms: float | None = None
    if turn.last_tick < len(audio_ids_ms):
        in_ms = audio_ids_ms[turn.last_tick]
        row.inbound_ms = in_ms - end_wall
    else:
        row.notes.append("its last frame is not in the in stream")
    # The agent's answer: the first turn replying to a final transcript of this utterance.
    answer: Event | None = None
    heard_entry_ms: int | None = None
    for agent_turn in agent_turns:
        heard = by_id.get(str(agent_turn.data["reply_to"]))
        span = _tick_span(heard[1]) if heard else None
        if heard and span and span[0] <= turn.last_tick + 5 and span[1] >= turn.first_tick - 5:
            answer, heard_entry_ms = agent_turn, heard[0]
            break
    if answer is None or heard_entry_ms is None:
        row.notes.append("no agent.turn answers it")
        return
    row.intent = answer.data.get("intent")
    row.text = str(answer.data.get("text", ""))
    row.synthesis_ms = _number(answer.data, "first_audio_ms")
    if in_ms is not None:
        row.transcriber_ms = heard_entry_ms - in_ms
    heard_at = _number(answer.data, "heard_at_ms")
    first_audio_at = _number(answer.data, "first_audio_at_ms")
    if heard_at is not None:
        row.agent_hop_ms = heard_at - heard_entry_ms
    if first_audio_at is not None:
        row.outbound_ms = arrived_wall - first_audio_at
        written = bisect.bisect_left(out_ids_ms, first_audio_at)
        if written < len(out_ids_ms):
            row.write_ms = out_ids_ms[written] - first_audio_at
            row.egress_ms = arrived_wall - out_ids_ms[written]
        if heard_at is not None:
            row.agent_work_ms = first_audio_at - heard_at


# --------------------------------------------------------------------------- Redis


async def tail_audio_ids(redis: aioredis.Redis, key: str, ids: list[int]) -> None:
    """Append the entry-id ms of every audio entry of ``key`` to ``ids``, in order, until an
    end entry (the in stream's last; the out stream has none: until cancelled). Read as they
    come: workers trim and delete the in stream behind them, the egress the out stream."""
    last: bytes | str = "0-0"
    while True:
        reply = cast(XReadReply | None, await redis.xread({key: last}, count=1000, block=200))
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                kind = fields.get(b"kind")
                if kind == b"audio":
                    ids.append(_entry_ms(entry_id))
                elif kind == b"end":
                    return


@contextlib.asynccontextmanager
async def tailing(
    redis: aioredis.Redis, key: str, ids: list[int]
) -> AsyncIterator[asyncio.Task[None]]:
    """:func:`tail_audio_ids` of ``key`` into ``ids`` while the context lasts."""
    task = asyncio.create_task(tail_audio_ids(redis, key, ids))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for_done(redis: aioredis.Redis, key: str, kinds: Sequence[str]) -> bool:
    """Until every one of ``kinds`` published ``{kind}.done`` on ``key``, at most 60 s."""
    wanted = {f"{kind}.done".encode() for kind in kinds}
    deadline = time.monotonic() + DONE_TIMEOUT_S
    while time.monotonic() < deadline:
        entries = cast(StreamEntries, await redis.xrange(key))
        if wanted <= {fields.get(b"type") for _, fields in entries}:
            return True
        await asyncio.sleep(0.2)
    return False


async def redis_hop_ms(url: str, rounds: int = BASELINE_ROUNDS) -> list[float]:
    """XADD on one connection → a blocked XREAD on another returns it: ms, ``rounds`` times."""
    key = f"bench-agent-hop-{uuid.uuid4().hex[:8]}"
    writer, reader = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    hops = []
    try:
        last: bytes | str = "0-0"

        async def read_one(after: bytes | str) -> None:
            await reader.xread({key: after}, count=1, block=2000)

        for i in range(rounds):
            read = asyncio.create_task(read_one(last))
            await asyncio.sleep(0.005)  # the XREAD is blocked in Redis by now
            began = time.perf_counter()
            last = await writer.xadd(key, {"i": i}, maxlen=100)
            await read
            hops.append((time.perf_counter() - began) * 1000)
    finally:
        await writer.delete(key)
        await writer.aclose()
        await reader.aclose()
    return hops


# --------------------------------------------------------------------------- processes


@contextlib.asynccontextmanager
async def worker(
    kind: str, env: Mapping[str, str], *options: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``callstream worker KIND`` until it serves (its log says so); stopped at the end. Its
    log is kept (the last lines are shown if it fails)."""
    argv = [sys.executable, "-m", "callstream", "worker", kind, *options]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    log: collections.deque[str] = collections.deque(maxlen=40)
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                line = (await proc.stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError(f"worker {kind} exited at start:\n{''.join(log)}")
                log.append(line)
                if "serving up to" in line:
                    break
        drain = asyncio.create_task(_drain(proc.stderr, log))
        try:
            yield proc
        finally:
            await servers.stop(proc)
            await drain
            if proc.returncode not in (0, -15):
                print(f"worker {kind} exited with {proc.returncode}:\n{''.join(log)}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _drain(stream: asyncio.StreamReader, log: collections.deque[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode(errors="replace"))


@contextlib.asynccontextmanager
async def redis_url(url: str | None) -> AsyncIterator[str]:
    if url is not None:
        yield url
        return
    async with private_redis() as (private, _):
        yield private


async def run(scripts_: Sequence[Script], url: str | None) -> dict[str, Any]:
    prefix = f"bench-agent-{uuid.uuid4().hex[:8]}"
    rows: list[Measured] = []
    calls: list[dict[str, Any]] = []
    async with redis_url(url) as redis_at:
        settings = Settings(redis_url=redis_at, prefix=prefix)
        env = {"REDIS_URL": redis_at, "CS_PREFIX": prefix}
        redis = aioredis.Redis.from_url(redis_at)
        try:
            baseline_before = await redis_hop_ms(redis_at)
            argv, port = servers.gateway(env)
            async with (
                servers.running("gateway", argv, port, "/readyz", env) as gateway,
                worker("transcribe", env),
                worker("agent", env),
            ):
                for i, script in enumerate(scripts_):
                    call_id = f"agent-{i}-{uuid.uuid4().hex[:6]}"
                    ids: list[int] = []
                    out_ids: list[int] = []
                    key = settings.keys.call_events(call_id)
                    async with (
                        tailing(redis, settings.keys.call_in(call_id), ids) as in_tail,
                        tailing(redis, settings.keys.call_out(call_id), out_ids),
                    ):
                        [result] = await simulate(
                            gateway.ws_url,
                            [script.audio],
                            rate_hz=RATE,
                            mode=script.mode,
                            call_ids=[call_id],
                            linger_s=3.0,
                        )
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(10):  # the in stream's end entry
                                await asyncio.shield(in_tail)
                        done = await wait_for_done(redis, key, ("transcribe", "agent"))
                    entries = cast(StreamEntries, await redis.xrange(key))
                    events = [(_entry_ms(eid), Event.from_fields(f)) for eid, f in entries]
                    measured = measure(script, result, (ids, out_ids), events)
                    calls.append(
                        {
                            "call": call_id,
                            "kind": script.kind,
                            "mode": script.mode,
                            "error": result.error,
                            "workers_done": done,
                            "stops_received": result.stops_received,
                            "frames_received": result.frames_received,
                            "agent_turns": [e.data for _, e in events if e.type == "agent.turn"],
                        }
                    )
                    _print_call(script, result, measured, done)
                    if script.kind != "warm-up":
                        rows.extend(measured)
            baseline_after = await redis_hop_ms(redis_at)
        finally:
            await redis.aclose()
            if url is not None:
                await cleanup(redis_at, prefix)
    return {
        "baseline_hop_ms": {"before": baseline_before, "after": baseline_after},
        "rows": rows,
        "calls": calls,
    }


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, width: int = 6) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.0f}"


def _print_call(script: Script, result: CallResult, rows: Sequence[Measured], done: bool) -> None:
    status = result.error or f"close {result.close_code}"
    print(
        f"\n{script.kind} call ({script.mode}) {result.call_id}: {status}, "
        f"{result.stops_received} stops, {result.frames_received} agent frames"
        + ("" if done else ", workers NOT done within 60 s")
    )
    print(
        f"  {'#':>2} {'over':>4} {'speech':>6} {'reply':>6} {'stop':>6} │ {'in':>4} "
        f"{'stt':>6} {'a.hop':>5} {'a.work':>6} {'out':>5} │ {'share':>5} {'synth':>5}  intent"
    )
    for r in rows:
        print(
            f"  {r.index:>2} {'yes' if r.talked_over else '':>4} {r.speech_ms:>6.0f} "
            f"{_fmt(r.reply_ms)} {_fmt(r.stop_ms)} │ {_fmt(r.inbound_ms, 4)} "
            f"{_fmt(r.transcriber_ms)} {_fmt(r.agent_hop_ms, 5)} {_fmt(r.agent_work_ms)} "
            f"{_fmt(r.outbound_ms, 5)} │ {_fmt(r.share_ms, 5)} {_fmt(r.synthesis_ms, 5)}  "
            f"{r.intent or ''} {' '.join(r.notes)}"
        )


def stats(values: Sequence[float | None]) -> dict[str, float] | None:
    measured = [v for v in values if v is not None]
    if not measured:
        return None
    p50, p95 = np.percentile(measured, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "max": float(max(measured)), "n": len(measured)}


def _line(name: str, s: dict[str, float] | None, target: str = "") -> str:
    if s is None:
        return f"{name:44} {'n/a':>7} {'n/a':>7} {'n/a':>7} {0:>4}  {target}"
    return (
        f"{name:44} {s['p50']:>7.1f} {s['p95']:>7.1f} {s['max']:>7.1f} {int(s['n']):>4}  {target}"
    )


def _verdict(s: dict[str, float] | None, key: str, limit: float) -> str:
    if s is None:
        return "n/a"
    return "met" if s[key] <= limit else "NOT met"


def barge_in_hold_ms() -> int | None:
    """How much voice the agent hears before it holds its audio (its default), if it says."""
    try:
        from callstream.workers.agent.bargein import BargeInConfig  # noqa: PLC0415
    except ImportError:
        return None
    hold_ms = getattr(BargeInConfig(), "hold_ms", None)
    return hold_ms if isinstance(hold_ms, int) else None


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    rows: list[Measured] = results["rows"]
    replies = [r for r in rows if r.reply_ms is not None]
    unmixed_over = [r for r in rows if r.talked_over and r.mode == "unmixed"]
    mixed_over = [r for r in rows if r.talked_over and r.mode == "mixed"]
    hold_ms = barge_in_hold_ms()
    stops = [r.stop_ms for r in unmixed_over + mixed_over if r.stop_ms is not None]
    summary: dict[str, Any] = {
        "barge_in_hold_ms": hold_ms,
        "stop_minus_hold_ms": stats([s - hold_ms for s in stops] if hold_ms is not None else []),
        "reply_ms": stats([r.reply_ms for r in replies]),
        "stop_ms_unmixed": stats([r.stop_ms for r in unmixed_over]),
        "stop_ms_mixed": stats([r.stop_ms for r in mixed_over]),
        "talked_over": {"unmixed": len(unmixed_over), "mixed": len(mixed_over)},
        "share_ms": stats([r.share_ms for r in replies]),
        "compute_ms": stats([r.compute_ms for r in replies]),
        "inbound_ms": stats([r.inbound_ms for r in replies]),
        "transcriber_ms": stats([r.transcriber_ms for r in replies]),
        "agent_hop_ms": stats([r.agent_hop_ms for r in replies]),
        "agent_work_ms": stats([r.agent_work_ms for r in replies]),
        "outbound_ms": stats([r.outbound_ms for r in replies]),
        "write_ms": stats([r.write_ms for r in replies]),
        "egress_ms": stats([r.egress_ms for r in replies]),
        "synthesis_ms": stats([r.synthesis_ms for r in replies]),
        "onset_to_speech_started_ms": stats(
            [r.onset_to_speech_started_ms for r in unmixed_over + mixed_over]
        ),
        "baseline_hop_before_ms": stats(results["baseline_hop_ms"]["before"]),
        "baseline_hop_after_ms": stats(results["baseline_hop_ms"]["after"]),
        "utterances": len(rows),
        "unanswered": [asdict(r) for r in rows if r.reply_ms is None and not r.talked_over],
    }
    return summary


def print_summary(s: Mapping[str, Any]) -> None:
    print(f"\n{'ms':44} {'p50':>7} {'p95':>7} {'max':>7} {'n':>4}  target")
    share = s["share_ms"]
    stop = s["stop_ms_unmixed"]
    reply = s["reply_ms"]
    print(
        _line(
            "end of speech -> first agent audio",
            reply,
            f"p50 <= {TARGET_REPLY_P50_MS:.0f}: {_verdict(reply, 'p50', TARGET_REPLY_P50_MS)}",
        )
    )
    print(
        _line(
            "  pipeline share (in + agent hop + out)",
            share,
            f"p95 <= {TARGET_SHARE_P95_MS:.0f}: {_verdict(share, 'p95', TARGET_SHARE_P95_MS)}",
        )
    )
    print(_line("  compute (reply - share)", s["compute_ms"]))
    print(_line("    inbound: frame sent -> in-stream entry", s["inbound_ms"]))
    print(_line("    transcriber: in entry -> final published", s["transcriber_ms"]))
    print(_line("    agent hop: final published -> heard", s["agent_hop_ms"]))
    print(_line("    agent work: heard -> first audio written", s["agent_work_ms"]))
    print(_line("      of which first sentence synthesis", s["synthesis_ms"]))
    print(_line("    outbound: audio written -> frame received", s["outbound_ms"]))
    print(_line("      agent's write: -> out-stream entry", s["write_ms"]))
    print(_line("      egress: out-stream entry -> received", s["egress_ms"]))
    print(
        _line(
            f"onset -> StopAudio, unmixed ({s['talked_over']['unmixed']} talked over)",
            stop,
            f"p95 <= {TARGET_STOP_P95_MS:.0f}: {_verdict(stop, 'p95', TARGET_STOP_P95_MS)}",
        )
    )
    print(
        _line(
            f"onset -> StopAudio, mixed ({s['talked_over']['mixed']} talked over)",
            s["stop_ms_mixed"],
        )
    )
    hold = s["barge_in_hold_ms"]
    print(
        _line(
            f"  both modes, minus hold_ms ({'n/a' if hold is None else hold} ms)",
            s["stop_minus_hold_ms"],
        )
    )
    print(_line("  onset -> speech.started (transcriber)", s["onset_to_speech_started_ms"]))
    print(_line("baseline: XADD -> blocked XREAD, before", s["baseline_hop_before_ms"]))
    print(_line("baseline: XADD -> blocked XREAD, after", s["baseline_hop_after_ms"]))
    print(f"(VAD hangover, part of the transcriber's time: {VAD_HANGOVER_MS} ms)")
    for row in s["unanswered"]:
        print(f"no reply measured: {row['call']} utterance {row['index']} {row['notes']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calls",
        type=int,
        default=2,
        help=f"conversation calls, {len(LINES)} lines each, mixed and unmixed in turn (~55 s each)",
    )
    parser.add_argument(
        "--barge-in",
        type=int,
        default=4,
        help="barge-in calls per mode, unmixed and mixed (~17 s each)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="no uncounted first call")
    parser.add_argument(
        "--redis-url", default=None, help="use this Redis (default: a private redis-server)"
    )
    parser.add_argument("--json", help="also write the results to this file")


def main(args: argparse.Namespace) -> int:
    if not piper_available():
        print("Piper is needed (./dev installs the speech extra)", file=sys.stderr)
        return 2
    began = time.monotonic()
    calls = scripts(args.calls, args.barge_in, not args.no_warmup)
    version = code_version()
    print(f"{len(calls)} calls, one at a time: gateway, transcribe and agent workers as processes")
    print(f"code: {version}")
    results = asyncio.run(run(calls, args.redis_url))
    summary = summarize(results)
    print_summary(summary)
    print(f"\n{time.monotonic() - began:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "code": version,
                    "summary": summary,
                    "rows": [
                        {**asdict(r), "share_ms": r.share_ms, "compute_ms": r.compute_ms}
                        for r in results["rows"]
                    ],
                    "calls": results["calls"],
                    "baseline_hop_ms": results["baseline_hop_ms"],
                },
                out,
                indent=2,
            )
    return 0
