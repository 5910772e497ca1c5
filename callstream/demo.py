"""``callstream demo``: one call through the whole pipeline on an embedded default.

Uses the Redis at ``REDIS_URL`` or starts a private ``redis-server``; runs a gateway and an echo
worker in this process (the same classes ``callstream gateway`` and ``callstream worker echo``
run); places an emulated ACS call with two synthetic talkers; checks that the audio played back
into the call is exactly the audio that was sent; writes the input, the recording and a report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from callstream.emulator.wav import write_wav
from callstream.localredis import ensure_redis
from callstream.simulate import CallResult, simulate
from ingress.server import Gateway
from shared.audio import Mode, chunk, frame_bytes_for, is_silent, mix
from shared.settings import Settings
from workers.echo import echo_factory
from workers.runtime import WorkerRuntime


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


async def place_demo_call(
    settings: Settings, talkers: list[bytes], *, rate_hz: int, mode: Mode
) -> CallResult:
    """Run Redis (if needed), a gateway and an echo worker, and place one emulated call."""
    async with ensure_redis(settings.redis_url) as url:
        settings = dataclasses.replace(settings, redis_url=url)
        print(f"Redis:   {url}")
        async with (
            Gateway(settings) as gateway,
            WorkerRuntime(settings, "echo", echo_factory(0.0), max_calls=4) as worker,
        ):
            print(f"Gateway: {gateway.url}  (+ egress, echo worker)")
            print(f"Calling: {mode} {rate_hz} Hz, {len(talkers)} participants")
            results = await simulate(
                gateway.url, talkers, rate_hz=rate_hz, mode=mode, dtmf=[("42#", 1.0)]
            )
            # Let the worker see the call's end before everything shuts down.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await worker.wait_idle()
    return results[0]


def run_demo(settings: Settings, *, rate_hz: int, mode: Mode, seconds: float, out_dir: Path) -> int:
    talkers = [
        synth_talker(rate_hz, seconds, (0.2, seconds * 0.45), 140.0, seed=1),
        synth_talker(rate_hz, seconds, (seconds * 0.5, seconds - 0.3), 220.0, seed=2),
    ]
    result = asyncio.run(place_demo_call(settings, talkers, rate_hz=rate_hz, mode=mode))
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
    report: dict[str, Any] = {
        "call_id": result.call_id,
        "frames_sent": result.frames_sent,
        "frames_received": result.frames_received,
        "speech_frames_sent": len(sent),
        "speech_frames_played": len(played),
        "played_equals_sent": played == sent,
        "echo_latency_ms": {"p50": float(p50), "p99": float(p99)},
        "close_code": result.close_code,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nSent {result.frames_sent} frames ({len(sent)} with speech); "
        f"the echo worker played back {len(played)} speech frames.\n"
        f"Played audio {'equals' if played == sent else 'DIFFERS FROM'} the speech sent, "
        f"byte for byte and in order.\n"
        f"Echo latency (sent → played back into the call): p50 {p50:.1f} ms, p99 {p99:.1f} ms.\n"
        f"Wrote {out_dir}/input.wav, recording.wav and report.json."
    )
    return 0 if played == sent and result.close_code in (1000, None) else 1


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
        help="one emulated call through gateway, Redis, echo worker and egress",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=int, choices=(16000, 24000), default=16000)
    parser.add_argument("--mode", choices=("mixed", "unmixed"), default="mixed")
    parser.add_argument("--seconds", type=float, default=6.0, help="call length (default 6)")
    parser.add_argument("--out", default="callstream-demo", help="output folder")
    parser.set_defaults(run=_run)
