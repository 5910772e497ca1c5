"""``callstream simulate``: an ACS call emulator, to test ACS bots locally without Azure.

It behaves as ACS does: ``AudioMetadata`` first, then one ``AudioData`` per stream every 20 ms
in real time (an absolute schedule), mixed (one stream, participants summed) or unmixed (one
stream per participant for the four most dominant speakers, tagged with ``participantRawID``,
``silent`` set on silence), DTMF tones when asked. Audio the server sends back (any of the
spellings seen in the wild) is played at real time into a recording; ``StopAudio`` drops what is
queued. Many concurrent calls share one ticker, so it doubles as a load generator.

Each call's turns are measured (callstream/emulator/turns.py): per caller utterance, end of
speech → the first audio of the reply, and, when the caller talked over the bot's audio, speech
onset → ``StopAudio``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
from array import array
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from callstream.emulator.playback import Playback
from callstream.emulator.speakers import DominantSpeakers
from callstream.emulator.turns import Turn, analyse
from callstream.emulator.wav import load_wav, write_wav
from callstream.shared.audio import FRAME_MS, Mode, as_int16, chunk, frame_bytes_for, is_silent, mix
from callstream.shared.errors import ConfigError, ProtocolError
from callstream.shared.events import iso_time
from callstream.shared.protocols.acs import OutboundAudio, StopAudio, parse_outbound

FRAME_S = FRAME_MS / 1000
SUBSLOTS = 10  # concurrent calls are spread over this many sub-slots of the 20 ms period
DTMF_SPACING_S = 0.2
QUIET_AFTER_S = 0.5  # linger ends once nothing is queued and nothing arrived for this long


# --------------------------------------------------------------------------- results


@dataclass
class CallResult:
    """What happened on one emulated call. ``recording`` is PCM16 at the call rate.

    ``started_at_ms`` is the wall-clock time (epoch ms) frame 0 was due, to correlate with
    other clocks (Redis entry ids are wall-clock ms); ``turns`` are times in seconds from it.
    """

    call_id: str
    frames_sent: int = 0
    frames_received: int = 0
    stops_received: int = 0
    unknown_messages: int = 0
    dtmf_sent: int = 0
    duration_s: float = 0.0
    close_code: int | None = None
    close_reason: str = ""
    error: str | None = None
    underruns: int = 0
    underrun_ms: float = 0.0
    first_audio_ms: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    started_at_ms: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    recording: bytes = b""

    @property
    def completed(self) -> bool:
        return self.error is None and self.close_code == 1000

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["recording"], data["latencies_ms"]
        data["completed"] = self.completed
        data["latency_ms"] = latency_summary(self.latencies_ms)
        data["turns"] = [asdict(turn) for turn in self.turns]
        return data


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float] | None:
    if not latencies_ms:
        return None
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(max(latencies_ms)),
        "matched_frames": len(latencies_ms),
    }


@dataclass(frozen=True)
class Progress:
    elapsed_s: float
    frames_sent: int
    frames_received: int
    calls_active: int
    calls_total: int


# --------------------------------------------------------------------------- the script


@dataclass(frozen=True)
class _Send:
    """One AudioData of a tick: the pre-encoded tail of the message after the timestamp."""

    tail: str
    pcm_hash: bytes | None  # for latency matching; None for silent frames


def participant_ids(count: int, seed: int = 0) -> list[str]:
    """Realistic raw ids: ACS users (``8:acs:…``) alternating with phone numbers (``4:+1…``)."""
    rng = np.random.default_rng(seed)
    resource = uuid.UUID(bytes=rng.bytes(16), version=4)
    ids = []
    for i in range(count):
        if i % 2 == 0:
            user = uuid.UUID(bytes=rng.bytes(16), version=4)
            ids.append(f"8:acs:{resource}_{str(user)[:8]}-{str(user)[9:]}")
        else:
            ids.append(f"4:+1425555{int(rng.integers(0, 10000)):04d}")
    return ids


def _hash(pcm: bytes) -> bytes:
    return hashlib.blake2b(pcm, digest_size=12).digest()


def build_script(participants: Sequence[bytes], rate_hz: int, mode: Mode) -> list[list[_Send]]:
    """Per 20 ms tick, the AudioData messages (minus timestamp) every call sends."""
    size = frame_bytes_for(rate_hz)
    longest = max(len(p) for p in participants)
    ticks = -(-longest // size)
    padded = [p + bytes(ticks * size - len(p)) for p in participants]
    frames = [chunk(p, size) for p in padded]

    def message(pcm: bytes, raw_id: str | None) -> _Send:
        silent = is_silent(pcm)
        pid = f'"participantRawID":"{raw_id}",' if raw_id else ""
        data = base64.b64encode(pcm).decode()
        tail = f'{pid}"data":"{data}","silent":{"true" if silent else "false"}}}}}'
        return _Send(tail, None if silent else _hash(pcm))

    if mode == "mixed":
        return [[message(mix([f[k] for f in frames]), None)] for k in range(ticks)]
    ids = participant_ids(len(participants))
    speakers = DominantSpeakers(len(participants))
    script = []
    for k in range(ticks):
        powers = [float(np.mean(np.square(as_int16(f[k]), dtype=np.float64))) for f in frames]
        script.append([message(frames[p][k], ids[p]) for p in speakers.update(powers)])
    return script


def parse_dtmf(spec: str) -> tuple[str, float]:
    """``DIGITS@SECONDS`` (e.g. ``12#@1.5``) → (digits, seconds)."""
    digits, sep, at = spec.rpartition("@")
    if not sep or not digits:
        raise ValueError(f"expected DIGITS@SECONDS such as 12#@1.5, got {spec!r}")
    if any(d not in "0123456789*#ABCDabcd" for d in digits):
        raise ValueError(f"DTMF digits must be 0-9 * # A-D, got {digits!r}")
    try:
        seconds = float(at)
    except ValueError:
        raise ValueError(f"expected seconds after '@', got {at!r}") from None
    if seconds < 0:
        raise ValueError(f"DTMF time must not be negative, got {seconds}")
    return digits.upper(), seconds


# --------------------------------------------------------------------------- one call


class _Call:
    def __init__(self, call_id: str, rate_hz: int, start_s: float) -> None:
        self.result = CallResult(call_id)
        self.rate_hz = rate_hz
        self.conn: ClientConnection | None = None
        self.playback = Playback(frame_bytes_for(rate_hz), start_s)
        self.start_s = start_s
        self.sent_at: dict[bytes, deque[float]] = {}
        self.last_audio_s = 0.0
        # For the turns, on the loop's clock: when each tick was sent, when audio and stops came.
        self.ticks_at = array("d")
        self.audio_at = array("d")
        self.stops_at = array("d")
        self.closed = False
        self.receiver: asyncio.Task[None] | None = None

    async def receive(self) -> None:
        assert self.conn is not None
        loop_time = asyncio.get_running_loop().time
        result = self.result
        try:
            async for message in self.conn:
                now = loop_time()
                try:
                    parsed = parse_outbound(message)
                except ProtocolError:
                    result.unknown_messages += 1
                    continue
                if isinstance(parsed, StopAudio):
                    self.stops_at.append(now)
                    self.playback.stop(now)
                elif isinstance(parsed, OutboundAudio):
                    self.audio_at.append(now)
                    if result.first_audio_ms is None:
                        result.first_audio_ms = (now - self.start_s) * 1000
                    self.last_audio_s = now
                    self.playback.push(parsed.pcm, now)
                    times = self.sent_at.get(_hash(parsed.pcm))
                    if times:
                        result.latencies_ms.append((now - times.popleft()) * 1000)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._record_close()

    def _record_close(self) -> None:
        if self.conn is None or self.result.close_code is not None:
            return
        self.result.close_code = self.conn.close_code
        self.result.close_reason = self.conn.close_reason or ""

    async def send(self, text: str, pcm_hash: bytes | None, now: float) -> None:
        if self.closed or self.conn is None:
            return
        if pcm_hash is not None:
            self.sent_at.setdefault(pcm_hash, deque()).append(now)
        try:
            await self.conn.send(text)
        except ConnectionClosed:
            self.closed = True

    def finish(self, now: float, speech: Sequence[bool]) -> None:
        """Close the books: ``speech[k]`` tells whether tick k of the script carried speech."""
        self.playback.advance(now)
        result = self.result
        start = self.start_s
        result.turns = analyse(
            speech,
            [t - start for t in self.ticks_at],
            [t - start for t in self.audio_at],
            [t - start for t in self.stops_at],
        )
        result.frames_received = self.playback.frames_received
        result.stops_received = self.playback.stops
        result.underruns = self.playback.underruns
        result.underrun_ms = self.playback.underrun_slots * FRAME_MS
        result.recording = self.playback.recording
        result.duration_s = now - self.start_s


def metadata_message(rate_hz: int) -> str:
    """An ACS AudioMetadata message for PCM16 mono at ``rate_hz``."""
    return json.dumps(
        {
            "kind": "AudioMetadata",
            "audioMetadata": {
                "subscriptionId": str(uuid.uuid4()),
                "encoding": "PCM",
                "sampleRate": rate_hz,
                "channels": 1,
                "length": frame_bytes_for(rate_hz),
            },
        }
    )


def _dtmf(tone: str, timestamp: str) -> str:
    return json.dumps({"kind": "DtmfData", "dtmfData": {"data": tone, "timestamp": timestamp}})


async def _open(call: _Call, url: str, headers: Mapping[str, str]) -> None:
    all_headers = {
        "x-ms-call-connection-id": call.result.call_id,
        "x-ms-call-correlation-id": str(uuid.uuid4()),
        **headers,
    }
    try:
        call.conn = await connect(
            url, additional_headers=all_headers, compression=None, max_queue=None, open_timeout=15
        )
    except InvalidStatus as exc:
        body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
        status = exc.response.status_code
        call.result.error = f"server refused the call: HTTP {status} {exc.response.reason_phrase}"
        if body:
            call.result.error += f": {body[:200]}"
        call.closed = True
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        call.result.error = f"cannot connect to {url}: {exc}"
        call.closed = True


# --------------------------------------------------------------------------- simulate


async def simulate(
    url: str,
    participants: Sequence[bytes],
    *,
    rate_hz: int = 16000,
    mode: Mode = "mixed",
    calls: int = 1,
    dtmf: Sequence[tuple[str, float]] = (),
    headers: Mapping[str, str] | None = None,
    call_ids: Sequence[str] | None = None,
    linger_s: float = 2.0,
    progress: Callable[[Progress], None] | None = None,
) -> list[CallResult]:
    """Place ``calls`` concurrent emulated calls; each participant is PCM16 mono at ``rate_hz``."""
    if not participants:
        raise ConfigError("a call needs at least one participant (--wav)")
    if call_ids is not None and len(call_ids) != calls:
        raise ConfigError(f"expected {calls} call ids, got {len(call_ids)}")
    loop = asyncio.get_running_loop()
    script = build_script(participants, rate_hz, mode)
    speech = [any(s.pcm_hash is not None for s in sends) for sends in script]
    ids = list(call_ids) if call_ids is not None else [str(uuid.uuid4()) for _ in range(calls)]
    start_s = loop.time()
    active = [_Call(call_id, rate_hz, start_s) for call_id in ids]
    await asyncio.gather(*(_open(c, url, headers or {}) for c in active))
    metadata = metadata_message(rate_hz)
    for call in active:
        if call.conn is not None:
            await call.send(metadata, None, loop.time())
            call.receiver = asyncio.create_task(call.receive())
    t0 = loop.time() + 0.01
    wall0_ms = int(time.time() * 1000) + 10
    epoch0_ms = time.time() * 1000 + (t0 - loop.time()) * 1000
    for call in active:
        call.start_s = t0
        call.playback = Playback(frame_bytes_for(rate_hz), t0)
        call.result.started_at_ms = epoch0_ms
    dtmf_at = sorted(
        (at + i * DTMF_SPACING_S, tone) for digits, at in dtmf for i, tone in enumerate(digits)
    )
    groups = [active[g::SUBSLOTS] for g in range(min(SUBSLOTS, len(active)))]
    try:
        await _send_script(active, _Plan(script, dtmf_at, t0, wall0_ms, groups), progress)
        await _linger(active, linger_s)
    finally:
        for call in active:
            if call.conn is not None:
                with contextlib.suppress(Exception):
                    await call.conn.close()
            if call.receiver is not None:
                with contextlib.suppress(Exception):
                    await call.receiver
            call.finish(loop.time(), speech)
    return [call.result for call in active]


@dataclass(frozen=True)
class _Plan:
    """When to send what: ticks of the script, DTMF tones, the clock's origin."""

    script: list[list[_Send]]
    dtmf_at: list[tuple[float, str]]  # (seconds from start, tone)
    t0: float  # loop time of frame 0
    wall0_ms: int  # wall-clock timestamp of frame 0
    groups: list[list[_Call]]  # calls per sub-slot of the 20 ms period


async def _send_script(
    active: list[_Call], plan: _Plan, progress: Callable[[Progress], None] | None
) -> None:
    loop = asyncio.get_running_loop()
    script, dtmf_at, t0, wall0_ms, groups = (
        plan.script,
        plan.dtmf_at,
        plan.t0,
        plan.wall0_ms,
        plan.groups,
    )
    sub_s = FRAME_S / len(groups)
    next_dtmf = 0
    for k, sends in enumerate(script):
        timestamp = iso_time(wall0_ms + k * FRAME_MS)
        head = f'{{"kind":"AudioData","audioData":{{"timestamp":"{timestamp}",'
        texts = [(head + s.tail, s.pcm_hash) for s in sends]
        for g, group in enumerate(groups):
            due = t0 + k * FRAME_S + g * sub_s
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            for call in group:
                if call.closed:
                    continue
                for text, pcm_hash in texts:
                    await call.send(text, pcm_hash, now)
                call.ticks_at.append(now)
                call.result.frames_sent += len(texts)
        while next_dtmf < len(dtmf_at) and dtmf_at[next_dtmf][0] <= (k + 1) * FRAME_S:
            for call in active:
                await call.send(_dtmf(dtmf_at[next_dtmf][1], timestamp), None, loop.time())
                if not call.closed:
                    call.result.dtmf_sent += 1
            next_dtmf += 1
        if progress is not None and k % 25 == 0:
            progress(_progress(active, loop.time() - t0))
        if all(call.closed for call in active):
            return


def _progress(active: list[_Call], elapsed_s: float) -> Progress:
    return Progress(
        elapsed_s=elapsed_s,
        frames_sent=sum(c.result.frames_sent for c in active),
        frames_received=sum(c.playback.frames_received for c in active),
        calls_active=sum(not c.closed for c in active),
        calls_total=len(active),
    )


async def _linger(active: list[_Call], linger_s: float) -> None:
    """Keep calls open until what the server sent has played out, or ``linger_s`` passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + linger_s
    linger_start = loop.time()
    while loop.time() < deadline:
        now = loop.time()
        for call in active:
            call.playback.advance(now)
        quiet = all(
            call.closed
            or (
                call.playback.queued_frames == 0
                and now - max(call.last_audio_s, linger_start) >= QUIET_AFTER_S
            )
            for call in active
        )
        if quiet:
            return
        await asyncio.sleep(FRAME_S)


# --------------------------------------------------------------------------- CLI


def _record_path(base: str, index: int, total: int) -> str:
    if total == 1:
        return base
    root, ext = os.path.splitext(base)
    return f"{root}-{index + 1}{ext or '.wav'}"


def _print_progress(p: Progress) -> None:
    sys.stderr.write(
        f"\r{p.elapsed_s:6.1f} s  calls {p.calls_active}/{p.calls_total}  "
        f"frames sent {p.frames_sent}  received {p.frames_received}   "
    )
    sys.stderr.flush()


def format_summary(results: Sequence[CallResult]) -> str:
    lines = [
        f"{'call':38} {'sent':>6} {'recv':>6} {'stops':>5} {'underruns':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7}  close"
    ]
    for r in results:
        lat = latency_summary(r.latencies_ms)
        p50 = f"{lat['p50']:.1f}" if lat else "-"
        p99 = f"{lat['p99']:.1f}" if lat else "-"
        close = r.error or f"{r.close_code} {r.close_reason}".strip()
        lines.append(
            f"{r.call_id[:38]:38} {r.frames_sent:>6} {r.frames_received:>6} "
            f"{r.stops_received:>5} {r.underruns:>9} {p50:>7} {p99:>7}  {close}"
        )
    done = sum(r.completed for r in results)
    lines.append(f"{done}/{len(results)} calls completed")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_turns(results: Sequence[CallResult]) -> str:
    """Per caller utterance: when it was said, and the bot's reply / stop latency (ms)."""
    lines = [
        f"{'call':38} {'turn':>4} {'onset s':>8} {'end s':>7} {'over':>4} "
        f"{'reply ms':>8} {'stop ms':>7}"
    ]
    for r in results:
        for i, turn in enumerate(r.turns):
            lines.append(
                f"{r.call_id[:38]:38} {i + 1:>4} {turn.onset_s:>8.2f} {turn.end_s:>7.2f} "
                f"{'yes' if turn.talked_over else '':>4} {_ms(turn.reply_ms):>8} "
                f"{_ms(turn.stop_ms):>7}"
            )
    for name, values in (
        ("end of speech -> reply", [t.reply_ms for r in results for t in r.turns]),
        ("onset -> StopAudio", [t.stop_ms for r in results for t in r.turns]),
    ):
        measured = [v for v in values if v is not None]
        if measured:
            p50, p95 = np.percentile(measured, [50, 95])
            lines.append(
                f"{name}: p50 {p50:.0f} ms  p95 {p95:.0f} ms  max {max(measured):.0f} ms  "
                f"n {len(measured)}"
            )
    return "\n".join(lines)


def _any_reaction(results: Sequence[CallResult]) -> bool:
    return any(t.reply_ms is not None or t.stop_ms is not None for r in results for t in r.turns)


def _run(args: argparse.Namespace, settings: Any) -> int:
    del settings
    try:
        participants = [load_wav(path, args.rate) for path in args.wav]
        dtmf = [parse_dtmf(spec) for spec in args.dtmf]
    except ValueError as exc:
        print(f"callstream simulate: {exc}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("CS_SIM_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    show = not args.quiet and sys.stderr.isatty()
    results = asyncio.run(
        simulate(
            args.url,
            participants,
            rate_hz=args.rate,
            mode=args.mode,
            calls=args.calls,
            dtmf=dtmf,
            headers=headers,
            call_ids=[args.call_id] if args.call_id else None,
            linger_s=args.linger,
            progress=_print_progress if show else None,
        )
    )
    if show:
        sys.stderr.write("\n")
    if args.record:
        for i, result in enumerate(results):
            write_wav(_record_path(args.record, i, len(results)), result.recording, args.rate)
    if args.report:
        latencies = [x for r in results for x in r.latencies_ms]
        report = {
            "url": args.url,
            "mode": args.mode,
            "rate_hz": args.rate,
            "calls": [r.summary() for r in results],
            "total": {
                "calls": len(results),
                "completed": sum(r.completed for r in results),
                "frames_sent": sum(r.frames_sent for r in results),
                "frames_received": sum(r.frames_received for r in results),
                "stops_received": sum(r.stops_received for r in results),
                "underruns": sum(r.underruns for r in results),
                "latency_ms": latency_summary(latencies),
            },
        }
        with open(args.report, "w") as out:
            json.dump(report, out, indent=2)
    if not args.quiet:
        print(format_summary(results))
        if args.turns or _any_reaction(results):
            print()
            print(format_turns(results))
    return 0 if all(r.completed for r in results) else 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="place emulated ACS calls against a WebSocket URL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="ws:// or wss:// URL of the bot, e.g. ws://127.0.0.1:8080/ws")
    parser.add_argument(
        "--wav",
        action="append",
        required=True,
        help="a participant's audio (any PCM WAV); repeat for more participants",
    )
    parser.add_argument("--mode", choices=("mixed", "unmixed"), default="mixed")
    parser.add_argument("--rate", type=int, choices=(16000, 24000), default=16000)
    parser.add_argument("--record", help="write what the server played into the call (WAV)")
    parser.add_argument("--report", help="write frames, gaps and latency as JSON")
    parser.add_argument("--calls", type=int, default=1, help="concurrent calls (default 1)")
    parser.add_argument(
        "--dtmf",
        action="append",
        default=[],
        metavar="DIGITS@SECONDS",
        help="send DTMF tones, e.g. 12#@1.5 (repeatable)",
    )
    parser.add_argument("--token", help="bearer token for the upgrade (or env CS_SIM_TOKEN)")
    parser.add_argument("--call-id", help="call id (x-ms-call-connection-id; default random)")
    parser.add_argument(
        "--linger",
        type=float,
        default=2.0,
        help="after the last frame, wait up to this long for audio to play out",
    )
    parser.add_argument(
        "--turns",
        action="store_true",
        help="print the per-utterance table even when the bot neither replied nor stopped",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line or summary")
    parser.set_defaults(run=_run)
