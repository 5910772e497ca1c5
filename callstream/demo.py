"""``callstream demo``: a caller talks with the voice agent on one emulated ACS call.

Uses the Redis at ``REDIS_URL`` or starts a private ``redis-server``; runs a gateway (with its
egress), a transcription worker, an NLP worker and the voice agent in this process (the same
classes ``callstream gateway`` and ``callstream worker transcribe|nlp|agent`` run), and places
one emulated call. The caller, spoken by flite, goes through the agent's sample dialog flow
(``workers/agent/default_flow.yaml``): a question about a phone bill; the agent asks for the
account number, which the caller keys in (DTMF); the agent reads it back, the caller says yes,
the agent answers, the caller says goodbye. The agent answers with Piper (espeak-ng when Piper
is not installed).

The emulator is not interactive: the caller's audio is made before the call. So the dialog is
first played offline on the caller's script, the agent's expected replies are synthesised to
know how long each lasts, and each caller line is placed after the reply to the one before, with
a margin for end-of-speech detection and synthesis.

While the call runs it prints what the caller says, what was heard (final transcripts), the
insights on it and the agent's turns; at its end the call's summary. It writes
``conversation.wav`` (stereo: the caller's track on the left, what was played into the call —
the agent — on the right) and ``report.json``. It exits 0 when the call closed normally, the
agent greeted and answered, and every line the caller said was transcribed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from callstream.emulator.wav import write_stereo_wav
from callstream.ingress.server import Gateway
from callstream.localredis import ensure_redis
from callstream.shared.audio import FRAME_MS, Mode, chunk, frame_bytes_for, is_silent
from callstream.shared.catalogue import AGENT_TURN
from callstream.shared.entries import StreamEntries, XReadReply
from callstream.shared.errors import CallstreamError
from callstream.shared.events import DTMF, Event
from callstream.shared.settings import Settings
from callstream.simulate import DTMF_SPACING_S, CallResult, participant_ids, simulate
from callstream.speech import flite_available, piper_available, piper_speak, speak
from callstream.workers.api import HandlerFactory, Kind
from callstream.workers.runtime import WorkerRuntime
from callstream.workers.stt.transcript import TICKS_PER_MS, TRANSCRIPT

DONE_TIMEOUT_S = 30.0  # how long the workers may take to finish the call after it hangs up
# Between the end of a caller's line and the end of the agent's reply to it, beyond the reply's
# own length: end-of-speech detection, recognition and synthesis (~1 s), then a short pause.
REPLY_MARGIN_S = 2.0
CALLER_VOICE = "slt"  # flite's voice for the caller (PocketSphinx hears the lines below well)
INSIGHTS = frozenset({"nlp.sentiment", "nlp.key_phrases", "nlp.intent", "nlp.pii"})
BYTES_PER_SAMPLE = 2


def synth_talker(
    rate_hz: int, seconds: float, talk: tuple[float, float], pitch_hz: float, seed: int
) -> bytes:
    """A speech-like PCM16 signal: voiced syllables with pauses, silent outside ``talk``.

    ``talk`` is (start_s, end_s). Syllables are 120–300 ms harmonic bursts with vibrato, separated
    by 60–200 ms of digital silence, so frames are clearly either speech or silence.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate_hz), dtype=np.float64)
    t_s = talk[0]
    while t_s < talk[1]:
        length_s = float(rng.uniform(0.12, 0.30))
        n = int(length_s * rate_hz)
        start = int(t_s * rate_hz)
        if start + n > out.size:
            break
        t = np.arange(n) / rate_hz
        f0 = pitch_hz * (1 + 0.04 * np.sin(2 * np.pi * 5 * t)) * float(rng.uniform(0.9, 1.1))
        phase = 2 * np.pi * np.cumsum(f0) / rate_hz
        voice = sum(np.sin(k * phase) / k for k in range(1, 6))
        envelope = np.sin(np.pi * np.arange(n) / n) ** 0.5
        out[start : start + n] = 0.25 * voice * envelope
        t_s += length_s + float(rng.uniform(0.06, 0.2))
    return (np.clip(out, -1, 1) * 32767).astype("<i2").tobytes()


def speech_frames(pcm: bytes, rate_hz: int) -> list[bytes]:
    """The 20 ms frames of ``pcm`` that are not silence, in order."""
    return [f for f in chunk(pcm, frame_bytes_for(rate_hz)) if not is_silent(f)]


# ------------------------------------------------------------------------ the conversation


@dataclasses.dataclass(frozen=True)
class Line:
    """One turn of the caller: words said, or keys pressed (DTMF, e.g. ``"41123456#"``)."""

    say: str = ""
    keys: str = ""


# The caller's side, through the sample flow: each line answers the agent's previous turn.
CALLER_SCRIPT: tuple[Line, ...] = (
    Line(say="hello i have a question about my phone bill"),  # billing: asks for the account
    Line(keys="41123456#"),  # read back: "I heard 4 1 1 2 3 4 5 6. Is that right?"
    Line(say="yes that is right"),  # the answer about the bill, "anything else?"
    Line(say="no that is all thank you goodbye"),  # "Thank you for calling. Goodbye!"
)


@dataclasses.dataclass(frozen=True)
class Cue:
    """A caller's line placed on the call's clock: from ``at_s`` for ``seconds``."""

    line: Line
    at_s: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class Conversation:
    """The caller's side made ready for the emulator, and what the agent should answer."""

    caller: bytes  # the caller's track, PCM16 at the call's rate, silent while the agent talks
    cues: tuple[Cue, ...]
    expected: tuple[str, ...]  # the agent's turns as the dialog plays offline, greeting first

    @property
    def dtmf(self) -> list[tuple[str, float]]:
        """The keyed lines as the emulator's ``dtmf`` argument: (keys, start s)."""
        return [(cue.line.keys, cue.at_s) for cue in self.cues if cue.line.keys]


def plan_conversation(
    script: Sequence[Line],
    rate_hz: int,
    *,
    caller_voice: Callable[[str, int], bytes],
    agent_voice: Callable[[str, int], bytes],
    margin_s: float = REPLY_MARGIN_S,
) -> Conversation:
    """Play the default dialog flow offline on ``script`` and place each line after the agent's
    expected reply to the one before (its synthesised length plus ``margin_s``); the track
    ends ``margin_s`` after the last reply. Lines start on 20 ms frame boundaries."""
    from callstream.workers.agent.dialog import Dialog, load_flow  # noqa: PLC0415 - agent extra

    dialog = Dialog(load_flow(None))
    state: dict[str, Any] = {}
    greeting = dialog.greet(state).text
    expected = [greeting]
    frame = frame_bytes_for(rate_hz)
    track = bytearray()
    cues: list[Cue] = []
    at_s = _seconds(agent_voice(greeting, rate_hz), rate_hz) + margin_s
    for line in script:
        at_s = round(at_s * 1000 / FRAME_MS) * FRAME_MS / 1000  # on a frame boundary
        if line.say:
            pcm = caller_voice(line.say, rate_hz)
            seconds = _seconds(pcm, rate_hz)
            start = round(at_s * rate_hz) * BYTES_PER_SAMPLE
            track += bytes(start - len(track)) + pcm
            reply = dialog.on_utterance(state, line.say)
        else:
            seconds = len(line.keys) * DTMF_SPACING_S
            replies = [dialog.on_dtmf(state, tone) for tone in line.keys]
            reply = next((r for r in reversed(replies) if r is not None), None)
        cues.append(Cue(line, at_s, seconds))
        at_s += seconds + margin_s
        if reply is not None:
            expected.append(reply.text)
            at_s += _seconds(agent_voice(reply.text, rate_hz), rate_hz)
    end = round(at_s * rate_hz) * BYTES_PER_SAMPLE
    track += bytes(end - len(track))
    track += bytes(-len(track) % frame)
    return Conversation(bytes(track), tuple(cues), tuple(expected))


def _seconds(pcm: bytes, rate_hz: int) -> float:
    return len(pcm) / (BYTES_PER_SAMPLE * rate_hz)


def _flite_caller(text: str, rate_hz: int) -> bytes:
    return speak(text, rate_hz, voice=CALLER_VOICE)


# ------------------------------------------------------------------------------ the call


@dataclasses.dataclass
class DemoCall:
    result: CallResult
    events: list[Event]  # the call's events stream, in order


async def place_demo_call(
    settings: Settings,
    conversation: Conversation,
    agent: HandlerFactory,
    *,
    rate_hz: int,
    mode: Mode,
) -> DemoCall:
    """Run Redis (if needed), a gateway, a transcription worker, an NLP worker (when its extra
    is installed) and the agent (``agent``: its handler factory), and place one emulated call
    with the caller's track; what happens is printed as it happens."""
    from callstream.workers.agent.worker import KIND as AGENT  # noqa: PLC0415 - agent extra
    from callstream.workers.stt.pocketsphinx_engine import pocketsphinx_factory  # noqa: PLC0415
    from callstream.workers.transcribe import KIND as TRANSCRIBE  # noqa: PLC0415
    from callstream.workers.transcribe import transcribe_factory  # noqa: PLC0415

    async with ensure_redis(settings.redis_url) as url, contextlib.AsyncExitStack() as stack:
        settings = dataclasses.replace(settings, redis_url=url)
        print(f"Redis:   {url}")
        gateway = await stack.enter_async_context(Gateway(settings))
        kinds: list[tuple[Kind, HandlerFactory]] = [
            (TRANSCRIBE, transcribe_factory(pocketsphinx_factory))
        ]
        nlp = _nlp_kind()
        if nlp is not None:
            kinds.append((nlp, nlp.factory(argparse.Namespace(intents=None))))
        kinds.append((AGENT, agent))
        workers = [
            await stack.enter_async_context(
                WorkerRuntime(settings, kind.name, factory, inputs=kind.inputs, max_calls=4)
            )
            for kind, factory in kinds
        ]
        names = " and ".join(f"{w.kind}" for w in workers)
        print(f"Gateway: {gateway.url}  (+ egress; workers: {names})")
        print(f"Calling: {mode} {rate_hz} Hz, {_seconds(conversation.caller, rate_hz):.1f} s\n")
        redis = aioredis.Redis.from_url(url, socket_timeout=None)
        stack.push_async_callback(redis.aclose)
        call_id = f"demo-{uuid.uuid4()}"
        events_key = settings.keys.call_events(call_id)
        stop = asyncio.Event()
        # Each worker kind says when it has published everything about the call.
        done = {f"{worker.kind}.done" for worker in workers}
        started = asyncio.get_running_loop().time()
        printer = asyncio.create_task(
            _print_events(redis, events_key, stop, done, cues=conversation.cues, started=started)
        )
        try:
            results = await simulate(
                gateway.url,
                [conversation.caller],
                rate_hz=rate_hz,
                mode=mode,
                dtmf=conversation.dtmf,
                call_ids=[call_id],
            )
            # Let the workers process the call to its end before everything shuts down.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DONE_TIMEOUT_S):
                    await asyncio.shield(printer)
        finally:
            stop.set()
            await printer
        entries = cast(StreamEntries, await redis.xrange(events_key))
    return DemoCall(results[0], [Event.from_fields(fields) for _, fields in entries])


def _nlp_kind() -> Kind | None:
    """The nlp kind, when its extra is installed."""
    try:
        from callstream.workers.nlp.worker import KIND  # noqa: PLC0415
    except ImportError:
        print("The nlp extra is not installed: no insights (pip install 'callstream[nlp]')")
        return None
    return KIND


async def _print_events(
    redis: aioredis.Redis,
    key: str,
    stop: asyncio.Event,
    done: set[str],
    *,
    cues: Sequence[Cue],
    started: float,
) -> None:
    """Print the caller's lines when they are due (``started``: the call's start, loop time),
    the call's final transcripts, the insights on each, keypad entries and the agent's turns as
    they are published, until every event type in ``done`` has come (or ``stop``)."""
    loop = asyncio.get_running_loop()
    names = _names()
    due = list(cues)
    keyed = ""  # DTMF tones heard since the last line printed
    last = b"0-0"
    waiting = set(done)
    while waiting and not stop.is_set():
        while due and loop.time() - started >= due[0].at_s:
            cue = due.pop(0)
            what = f"says     {cue.line.say}" if cue.line.say else f"keys     {cue.line.keys}"
            print(f"{cue.at_s:5.1f} s  caller {what}")
        reply = cast(XReadReply, await redis.xread({key: last}, block=100))
        for _, entries in reply or ():
            for entry_id, fields in entries:
                last = entry_id
                event = Event.from_fields(fields)
                waiting.discard(event.type)
                if event.type == DTMF:
                    keyed += str(event.data.get("tone", ""))
                    if keyed.endswith("#"):
                        print(f"         dtmf     {keyed}")
                        keyed = ""
                elif _is_final(event):
                    who = names.get(event.data.get("participantRawID") or "", "call")
                    print(f"         heard    {who}: {event.data['text']}")
                elif event.type in INSIGHTS:
                    print(f"                  {_insight(event)}")
                elif event.type == AGENT_TURN:
                    print(f"         agent    {_turn(event)}")
    if keyed:
        print(f"         dtmf     {keyed}")


def _turn(event: Event) -> str:
    """One line for an agent's turn: what it said, and why."""
    data = event.data
    notes = [str(data[k]) for k in ("intent", "action") if data.get(k)]
    if data.get("interrupted"):
        notes.append("interrupted")
    return str(data.get("text", "")) + (f"  [{', '.join(notes)}]" if notes else "")


def _insight(event: Event) -> str:
    """One line for an nlp insight under the utterance it is about."""
    data = event.data
    if event.type == "nlp.sentiment":
        return f"sentiment {data['label']} ({data['score']:+.2f}, running {data['rolling']:+.2f})"
    if event.type == "nlp.key_phrases":
        return "phrases   " + ", ".join(data["phrases"])
    if event.type == "nlp.intent":
        return f"intent    {data['name']} ({data['score']:.2f})"
    if event.type == "nlp.pii":
        kinds = ", ".join(sorted({e["type"] for e in data["entities"]}))
        return f"pii       {kinds}: {data['redacted_text']}"
    return f"{event.type} {json.dumps(dict(data))}"


def _names() -> dict[str, str]:
    """The emulator's participantRawID of the caller (unmixed calls) → "caller"."""
    return {participant_ids(1)[0]: "caller"}


def _is_final(event: Event) -> bool:
    return event.type == TRANSCRIPT and event.data.get("resultStatus") == "Final"


def _transcribed(cue: Cue, transcripts: Sequence[dict[str, Any]]) -> bool:
    """Whether a final transcript overlaps the time the caller said ``cue``'s line."""
    end_s = cue.at_s + cue.seconds
    return any(
        t["offset_s"] < end_s and t["offset_s"] + t["duration_s"] > cue.at_s for t in transcripts
    )


# ---------------------------------------------------------------------------- the demo


def _voices() -> tuple[Callable[[str, int], bytes], str, str] | str:
    """The caller's voice, its name and the agent's ``--tts``; or what is missing."""
    if piper_available():
        tts = "piper"
    elif shutil.which("espeak-ng"):
        print("Piper is not installed: the agent speaks with espeak-ng (./dev installs Piper)")
        tts = "espeak"
    else:
        return "Neither Piper nor espeak-ng is installed: the agent cannot speak (run ./dev demo)"
    if flite_available():
        return _flite_caller, f"flite {CALLER_VOICE}", tts
    if piper_available():
        print("flite is not installed: the caller speaks with Piper too (./dev installs flite)")
        return piper_speak, "piper", tts
    return "flite is not installed: the caller cannot speak (apt-get install flite)"


def _agent_factory(tts: str) -> HandlerFactory:
    """The agent as ``callstream worker agent --tts TTS`` configures it (its other options at
    their defaults: the sample dialog flow)."""
    from callstream.workers.agent.worker import KIND as AGENT  # noqa: PLC0415 - agent extra

    parser = argparse.ArgumentParser()
    if AGENT.add_arguments is not None:
        AGENT.add_arguments(parser)
    return AGENT.factory(parser.parse_args(["--tts", tts]))


def run_demo(settings: Settings, *, rate_hz: int, mode: Mode, out_dir: Path) -> int:
    voices = _voices()
    if isinstance(voices, str):
        print(voices)
        return 1
    caller_voice, caller_name, tts = voices
    try:
        from callstream.workers.agent.tts import make_synthesizer  # noqa: PLC0415

        agent = _agent_factory(tts)
        agent_voice = make_synthesizer(tts, {})
        conversation = plan_conversation(
            CALLER_SCRIPT, rate_hz, caller_voice=caller_voice, agent_voice=agent_voice.synthesize
        )
    except ImportError as exc:
        print(f"The agent or transcription extra is not installed ({exc}): run ./dev demo")
        return 1
    except CallstreamError as exc:
        print(f"The agent cannot start: {exc}")
        return 1
    print(f"Caller:  {caller_name} (left channel); agent: {tts} (right channel)")
    demo = asyncio.run(place_demo_call(settings, conversation, agent, rate_hz=rate_hz, mode=mode))
    result = demo.result
    names = _names()
    transcripts = [
        {
            "participant": names.get(e.data.get("participantRawID") or "", "call"),
            "offset_s": e.data["offset"] / TICKS_PER_MS / 1000,
            "duration_s": e.data["duration"] / TICKS_PER_MS / 1000,
            "text": e.data["text"],
            "confidence": e.data["confidence"],
        }
        for e in demo.events
        if _is_final(e)
    ]
    turns = [
        {
            "turn": e.data["turn"],
            "text": e.data["text"],
            "intent": e.data.get("intent"),
            "action": e.data.get("action"),
            "interrupted": bool(e.data.get("interrupted", False)),
        }
        for e in demo.events
        if e.type == AGENT_TURN
    ]
    said = [cue for cue in conversation.cues if cue.line.say]
    missed = [cue.line.say for cue in said if not _transcribed(cue, transcripts)]
    insights = [e for e in demo.events if e.type in INSIGHTS]
    summaries = [dict(e.data) for e in demo.events if e.type == "nlp.summary"]
    out_dir.mkdir(parents=True, exist_ok=True)
    wav = out_dir / "conversation.wav"
    write_stereo_wav(str(wav), conversation.caller, result.recording, rate_hz)
    report: dict[str, Any] = {
        "call_id": result.call_id,
        "mode": mode,
        "rate_hz": rate_hz,
        "voices": {"caller": caller_name, "agent": tts},
        "close_code": result.close_code,
        "frames_sent": result.frames_sent,
        "frames_received": result.frames_received,
        "said": [
            {"participant": "caller", "at_s": c.at_s, "seconds": c.seconds, "text": c.line.say}
            for c in said
        ],
        "keyed": [{"at_s": c.at_s, "keys": c.line.keys} for c in conversation.cues if c.line.keys],
        "expected_turns": list(conversation.expected),
        "agent_turns": turns,
        "transcripts": transcripts,
        "insights": [{"type": e.type, **dict(e.data)} for e in insights],
        "summary": summaries[0] if summaries else None,
        "recording": {
            "seconds": _seconds(result.recording, rate_hz),
            "sha256": hashlib.sha256(result.recording).hexdigest(),
        },
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    answered = len(turns) >= 2  # the greeting, and a reply to the caller
    matched = sum(t["text"] == e for t, e in zip(turns, conversation.expected, strict=False))
    closed = result.error is None and result.close_code in (1000, None)
    print(
        f"\nThe agent took {len(turns)} turns ({matched} of the {len(conversation.expected)} "
        f"the flow plays offline, in order); the caller said {len(said)} lines "
        f"and keyed {len(conversation.dtmf)} entry, {len(transcripts)} transcripts."
    )
    if missed:
        print("NOT TRANSCRIBED: " + "; ".join(missed))
    if not answered:
        print("THE AGENT DID NOT ANSWER: fewer than 2 agent turns")
    if not closed:
        print(f"THE CALL DID NOT CLOSE NORMALLY: code {result.close_code}, {result.error}")
    if summaries:
        print(_summary_table(summaries[0], names))
    print(f"\nWrote {wav} (caller left, agent right) and {out_dir / 'report.json'}.")
    return 0 if closed and answered and not missed else 1


def _summary_table(summary: dict[str, Any], names: dict[str, str]) -> str:
    """The call's nlp.summary as a small table."""
    lines = ["\nSummary (nlp worker):", "  who      talk s  turns  interrupts  sentiment"]
    for raw_id, stats in summary["participants"].items():
        mean = stats["mean_sentiment"]
        lines.append(
            f"  {names.get(raw_id, raw_id or 'call'):<8} {stats['talk_time_s']:6.1f}"
            f"  {stats['turns']:5d}  {stats['interruptions']:10d}"
            f"  {'' if mean is None else f'{mean:+.2f}':>9}"
        )
    trend = summary["sentiment_trend"]
    silence = summary["silence_ratio"]
    lines += [
        f"  call {summary['duration_s']:.1f} s, {summary['utterances']} utterances, "
        + ("" if silence is None else f"{silence:.0%} silence, ")
        + f"sentiment {trend['direction']}",
        "  key phrases: " + (", ".join(summary["key_phrases"]) or "-"),
        "  intents: "
        + (", ".join(f"{i['name']} ({i['score']:.2f})" for i in summary["intents"]) or "-"),
        f"  DTMF: {summary['dtmf'] if summary['dtmf'] is not None else summary['dtmf_count']}",
    ]
    return "\n".join(lines)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return run_demo(settings, rate_hz=args.rate, mode=args.mode, out_dir=Path(args.out))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a caller talks with the voice agent on one emulated call: gateway, Redis, "
        "transcription, insights, agent, egress; writes a stereo conversation.wav",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=int, choices=(16000, 24000), default=16000)
    parser.add_argument("--mode", choices=("mixed", "unmixed"), default="mixed")
    parser.add_argument("--out", default="callstream-demo", help="output folder")
    parser.set_defaults(run=_run)
