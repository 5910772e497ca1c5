"""``callstream demo``: one call through the whole pipeline on an embedded default.

Uses the Redis at ``REDIS_URL`` or starts a private ``redis-server``; runs a gateway, an echo
worker, a transcription worker and an NLP worker in this process (the same classes
``callstream gateway`` and ``callstream worker echo|transcribe|nlp`` run); places an emulated
ACS call in which a caller and an agent, spoken by Piper (or flite), take turns; prints the
transcripts and the insights on each as they arrive, and the call's summary at its end; checks
that the audio played back into the call is exactly the speech that was sent and that every
utterance was transcribed; writes the input, the recording and a report. Without a
synthesiser the talkers are synthetic and nothing is transcribed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from callstream.emulator.wav import write_wav
from callstream.ingress.server import Gateway
from callstream.localredis import ensure_redis
from callstream.shared.audio import Mode, chunk, frame_bytes_for, is_silent, mix
from callstream.shared.entries import StreamEntries, XReadReply
from callstream.shared.events import DTMF, Event
from callstream.shared.settings import Settings
from callstream.simulate import CallResult, participant_ids, simulate
from callstream.speech import flite_available, piper_available, say
from callstream.workers.api import Kind
from callstream.workers.echo import echo_factory
from callstream.workers.runtime import WorkerRuntime
from callstream.workers.stt.transcript import TICKS_PER_MS, TRANSCRIPT

DONE_TIMEOUT_S = 30.0  # how long the workers may take to finish the call after it hangs up


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


# The demo's conversation: a caller and an agent take turns.
CONVERSATION = (  # (name, text, flite voice when Piper is not installed)
    (
        "caller",
        "hello i have a problem with my bill this is the worst service i have ever had",
        "slt",
    ),
    ("agent", "i am sorry to hear that let me help you with your bill", "rms"),
    (
        "caller",
        "my card number is four one one one one one one one one one one one one one one one",
        "slt",
    ),
    ("agent", "all right let me look at your account", "rms"),
    ("caller", "i want to cancel my subscription", "slt"),
)
SPEAKERS = ("caller", "agent")
INSIGHTS = frozenset({"nlp.sentiment", "nlp.key_phrases", "nlp.intent", "nlp.pii"})


def spoken_talkers(rate_hz: int) -> list[bytes]:
    """The conversation read aloud: one track per participant, silent while the other speaks
    (0.5 s lead, 0.8 s between turns, 1 s tail)."""
    clips = [(name, say(text, rate_hz, voice=voice)) for name, text, voice in CONVERSATION]
    lead, gap, tail = (int(rate_hz * s) * 2 for s in (0.5, 0.8, 1.0))
    total = lead + sum(len(c) for _, c in clips) + gap * (len(clips) - 1) + tail
    tracks = {name: bytearray(total) for name in SPEAKERS}
    at = lead
    for name, clip in clips:
        tracks[name][at : at + len(clip)] = clip
        at += len(clip) + gap
    return [bytes(tracks[name]) for name in SPEAKERS]


@dataclasses.dataclass
class DemoCall:
    result: CallResult
    events: list[Event]  # the call's events stream, in order


async def place_demo_call(
    settings: Settings, talkers: list[bytes], *, rate_hz: int, mode: Mode, transcribe: bool
) -> DemoCall:
    """Run Redis (if needed), a gateway, an echo worker and (``transcribe``) a transcription
    worker, and place one emulated call; its transcripts are printed as they arrive."""
    async with ensure_redis(settings.redis_url) as url, contextlib.AsyncExitStack() as stack:
        settings = dataclasses.replace(settings, redis_url=url)
        print(f"Redis:   {url}")
        gateway = await stack.enter_async_context(Gateway(settings))
        workers = [
            await stack.enter_async_context(
                WorkerRuntime(settings, "echo", echo_factory(0.0), max_calls=4)
            )
        ]
        if transcribe:
            # Imported here: without flite there is nothing to transcribe, and PocketSphinx
            # (the `transcribe` extra) need not be installed.
            from callstream.workers.stt.pocketsphinx_engine import (  # noqa: PLC0415
                pocketsphinx_factory,
            )
            from callstream.workers.transcribe import KIND as TRANSCRIBE  # noqa: PLC0415
            from callstream.workers.transcribe import transcribe_factory  # noqa: PLC0415

            workers.append(
                await stack.enter_async_context(
                    WorkerRuntime(
                        settings,
                        TRANSCRIBE.name,
                        transcribe_factory(pocketsphinx_factory),
                        inputs=TRANSCRIBE.inputs,
                        max_calls=4,
                    )
                )
            )
            nlp = _nlp_kind()
            if nlp is not None:
                workers.append(
                    await stack.enter_async_context(
                        WorkerRuntime(
                            settings,
                            nlp.name,
                            nlp.factory(argparse.Namespace(intents=None)),
                            inputs=nlp.inputs,
                            max_calls=4,
                        )
                    )
                )
        kinds = " and ".join(f"{w.kind} worker" for w in workers)
        print(f"Gateway: {gateway.url}  (+ egress, {kinds})")
        print(f"Calling: {mode} {rate_hz} Hz, {len(talkers)} participants\n")
        redis = aioredis.Redis.from_url(url, socket_timeout=None)
        stack.push_async_callback(redis.aclose)
        call_id = f"demo-{uuid.uuid4()}"
        events_key = settings.keys.call_events(call_id)
        stop = asyncio.Event()
        # Each worker kind says when it has published everything about the call.
        done = {f"{worker.kind}.done" for worker in workers}
        printer = asyncio.create_task(_print_events(redis, events_key, stop, done))
        try:
            results = await simulate(
                gateway.url,
                talkers,
                rate_hz=rate_hz,
                mode=mode,
                dtmf=[("42#", 1.0)],
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
    redis: aioredis.Redis, key: str, stop: asyncio.Event, done: set[str]
) -> None:
    """Print the call's final transcripts, the insights on each and DTMF tones as they are
    published, until every event type in ``done`` has come (or ``stop``)."""
    names = _names()
    last = b"0-0"
    waiting = set(done)
    while waiting and not stop.is_set():
        reply = cast(XReadReply, await redis.xread({key: last}, block=100))
        for _, entries in reply or ():
            for entry_id, fields in entries:
                last = entry_id
                event = Event.from_fields(fields)
                waiting.discard(event.type)
                if event.type == DTMF:
                    print(f"  dtmf     {event.data['tone']}")
                elif _is_final(event):
                    who = names.get(event.data.get("participantRawID") or "", "call")
                    print(f"  heard    {who}: {event.data['text']}")
                elif event.type in INSIGHTS:
                    print(f"           {_insight(event)}")


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
    """The emulator's participantRawID of each participant → its name in the conversation."""
    ids = participant_ids(len(SPEAKERS))
    return dict(zip(ids, SPEAKERS, strict=True))


def _is_final(event: Event) -> bool:
    return event.type == TRANSCRIPT and event.data.get("resultStatus") == "Final"


def run_demo(settings: Settings, *, rate_hz: int, mode: Mode, seconds: float, out_dir: Path) -> int:
    spoken = piper_available() or flite_available()
    if spoken:
        talkers = spoken_talkers(rate_hz)
    else:
        print(
            "Neither Piper nor flite is installed: synthetic talkers, no transcription "
            "(./dev installs them)"
        )
        talkers = [
            synth_talker(rate_hz, seconds, (0.2, seconds * 0.45), 140.0, seed=1),
            synth_talker(rate_hz, seconds, (seconds * 0.5, seconds - 0.3), 220.0, seed=2),
        ]
    demo = asyncio.run(
        place_demo_call(settings, talkers, rate_hz=rate_hz, mode=mode, transcribe=spoken)
    )
    result = demo.result
    # Echo plays back every speech frame it receives, in arrival order.
    if mode == "mixed":
        sent = speech_frames(mix(talkers), rate_hz)
    else:
        sent = _interleaved_speech(talkers, rate_hz)
    played = speech_frames(result.recording, rate_hz)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_wav(str(out_dir / "input.wav"), mix(talkers), rate_hz)
    write_wav(str(out_dir / "recording.wav"), result.recording, rate_hz)
    p50, p99 = (
        np.percentile(result.latencies_ms, [50, 99]) if result.latencies_ms else (np.nan, np.nan)
    )
    names = _names()
    transcripts = [
        {
            "participant": names.get(e.data.get("participantRawID") or "", "call"),
            "offset_s": e.data["offset"] / TICKS_PER_MS / 1000,
            "text": e.data["text"],
            "confidence": e.data["confidence"],
        }
        for e in demo.events
        if _is_final(e)
    ]
    if not spoken:
        heard_everyone = True
    elif mode == "unmixed":  # each participant's stream is recognised on its own
        heard_everyone = {t["participant"] for t in transcripts} == set(SPEAKERS)
    else:
        heard_everyone = len(transcripts) >= len(CONVERSATION)
    insights = [e for e in demo.events if e.type in INSIGHTS]
    summaries = [dict(e.data) for e in demo.events if e.type == "nlp.summary"]
    report: dict[str, Any] = {
        "call_id": result.call_id,
        "frames_sent": result.frames_sent,
        "frames_received": result.frames_received,
        "speech_frames_sent": len(sent),
        "speech_frames_played": len(played),
        "played_equals_sent": played == sent,
        "echo_latency_ms": {"p50": float(p50), "p99": float(p99)},
        "close_code": result.close_code,
        "said": [{"participant": n, "text": t} for n, t, _ in CONVERSATION] if spoken else [],
        "transcripts": transcripts,
        "insights": [{"type": e.type, **dict(e.data)} for e in insights],
        "summary": summaries[0] if summaries else None,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nSent {result.frames_sent} frames ({len(sent)} with speech); "
        f"the echo worker played back {len(played)} speech frames.\n"
        f"Played audio {'equals' if played == sent else 'DIFFERS FROM'} the speech sent, "
        f"byte for byte and in order.\n"
        f"Echo latency (sent → played back into the call): p50 {p50:.1f} ms, p99 {p99:.1f} ms."
    )
    if spoken:
        print("\nSaid:")
        for name, text, _ in CONVERSATION:
            print(f"  {name}: {text}")
        print("Transcribed (offline PocketSphinx; final results, offsets from call start):")
        for t in transcripts:
            print(f"  {t['offset_s']:5.2f} s  {t['participant']}: {t['text']}")
        if not heard_everyone:
            print("  TRANSCRIPTS MISSING: not every utterance was transcribed")
        if summaries:
            print(_summary_table(summaries[0], names))
    print(f"\nWrote {out_dir}/input.wav, recording.wav and report.json.")
    ok = played == sent and heard_everyone and result.close_code in (1000, None)
    return 0 if ok else 1


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


def _interleaved_speech(talkers: list[bytes], rate_hz: int) -> list[bytes]:
    """Unmixed: every 20 ms each participant's frame is sent; speech frames in that order."""
    size = frame_bytes_for(rate_hz)
    per_talker = [chunk(t, size) for t in talkers]
    frames: list[bytes] = []
    for slot in zip(*per_talker, strict=True):
        frames.extend(f for f in slot if not is_silent(f))
    return frames


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return run_demo(
        settings,
        rate_hz=args.rate,
        mode=args.mode,
        seconds=args.seconds,
        out_dir=Path(args.out),
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="one emulated call through gateway, Redis, echo and transcription workers, egress",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=int, choices=(16000, 24000), default=16000)
    parser.add_argument("--mode", choices=("mixed", "unmixed"), default="mixed")
    parser.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        help="call length without flite (default 6; spoken, the conversation sets it)",
    )
    parser.add_argument("--out", default="callstream-demo", help="output folder")
    parser.set_defaults(run=_run)
