"""Transcription benchmark: the PocketSphinx engine alone, then the whole pipeline.

1. **engine** — speech made with espeak-ng (sentences and pauses, ``--seconds`` long) is run
   through the transcriber core (VAD + PocketSphinx) directly: CPU seconds per audio second
   (the real-time factor) and so concurrent real-time streams per core; then the same in
   ``--threads`` threads at once, to see whether the engine releases the GIL.
2. **pipeline** — ``--calls`` emulated calls stream that speech at real time through a gateway
   process and a ``callstream worker transcribe`` process (real Redis). For every intermediate
   result: frame published (its in-stream entry id) → result event published (its events-stream
   entry id), both on Redis's clock. The engine's own compute for the audio behind one result
   is known from part 1 (real-time factor × the audio), so the rest is the pipeline's.

    python -m bench transcribe --seconds 30 --calls 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from bench import servers
from bench.ingest import cleanup
from callstream.emulator.wav import load_wav
from callstream.shared.entries import InFrame, StreamEntries
from callstream.shared.events import Event
from callstream.shared.settings import DEFAULT_REDIS_URL, Settings
from callstream.simulate import simulate
from callstream.workers.stt.pocketsphinx_engine import pocketsphinx_factory
from callstream.workers.stt.transcript import TICKS_PER_MS, TRANSCRIPT
from callstream.workers.transcribe import Transcriber

RATE = 16000
FRAME = RATE // 50 * 2
SENTENCES = (
    "hello i would like to check the balance of my account",
    "please transfer me to the billing department",
    "my card was charged twice for the same order",
    "can you tell me when the store opens tomorrow",
    "i need to change the address on my account",
)


def speech(seconds: float) -> bytes:
    """Sentences separated by one-second pauses, ``seconds`` long (whole frames)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is needed: apt-get install espeak-ng")
    pause = bytes(RATE * 2)
    audio = bytearray(pause)
    with tempfile.TemporaryDirectory() as tmp:
        i = 0
        while len(audio) < seconds * RATE * 2:
            path = Path(tmp) / f"{i}.wav"
            subprocess.run(
                [espeak, "-s", "150", "-w", str(path), SENTENCES[i % len(SENTENCES)]], check=True
            )
            audio += load_wav(str(path), RATE) + pause
            i += 1
    del audio[int(seconds * RATE * 2) // FRAME * FRAME :]
    return bytes(audio)


def frames_of(audio: bytes) -> list[tuple[str, InFrame]]:
    return [
        (f"{i + 1}-0", InFrame(i, 20 * i, "", 0, False, audio[i * FRAME : (i + 1) * FRAME]))
        for i in range(len(audio) // FRAME)
    ]


def engine(audio: bytes, threads: int) -> dict[str, Any]:
    audio_s = len(audio) / (RATE * 2)
    frames = frames_of(audio)
    core = Transcriber("bench", RATE, pocketsphinx_factory)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    events = core.process(frames, ended=True)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finals = sum(e.type == TRANSCRIPT and e.data["resultStatus"] == "Final" for e in events)

    def one() -> None:
        Transcriber("bench", RATE, pocketsphinx_factory).process(frames, ended=True)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    wall0 = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    threaded_wall = time.perf_counter() - wall0
    return {
        "audio_s": audio_s,
        "utterances": finals,
        "cpu_s": cpu,
        "wall_s": wall,
        "real_time_factor": cpu / audio_s,
        "streams_per_core": audio_s / cpu,
        "threads": threads,
        "threads_wall_s": threaded_wall,
        "threads_speedup": threads * wall / threaded_wall,
    }


async def pipeline(audio: bytes, calls: int, redis_url: str) -> dict[str, Any]:
    """Gateway and worker as their own processes (as deployed); the calls from this one."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_url, prefix=prefix)
    env = {"REDIS_URL": redis_url, "CS_PREFIX": prefix}
    ids = [f"stt-{i}" for i in range(calls)]
    latencies: list[float] = []
    argv, port = servers.gateway(env)
    worker = await asyncio.create_subprocess_exec(
        *servers.worker("transcribe", "--max-calls", str(calls)), env={**os.environ, **env}
    )
    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with servers.running("gateway", argv, port, "/healthz", env) as gateway:
            cpu0 = _cpu_s(worker.pid)
            results = await simulate(
                f"ws://127.0.0.1:{gateway.port}/ws", [audio], calls=calls, call_ids=ids
            )
            assert all(r.completed for r in results), [r.error for r in results]
            group = settings.keys.group("transcribe")
            deadline = time.monotonic() + 120
            while await redis.xpending_range(settings.keys.calls, group, "-", "+", 10):
                assert time.monotonic() < deadline, "the worker did not finish the calls"
                await asyncio.sleep(0.2)
            worker_cpu_pct = 100 * (_cpu_s(worker.pid) - cpu0) / (len(audio) / (RATE * 2))
        for call_id in ids:
            entries = cast(StreamEntries, await redis.xrange(settings.keys.call_in(call_id)))
            published = [
                int(entry_id.split(b"-")[0])
                for entry_id, fields in entries
                if fields.get(b"kind") == b"audio"
            ]
            events = cast(StreamEntries, await redis.xrange(settings.keys.call_events(call_id)))
            for entry_id, fields in events:
                event = Event.from_fields(fields)
                if event.type != TRANSCRIPT or event.data["resultStatus"] != "Intermediate":
                    continue
                # The result covers the audio up to its end: the frame that completed it.
                end_ms = (event.data["offset"] + event.data["duration"]) // TICKS_PER_MS
                frame = min(len(published) - 1, max(0, end_ms // 20 - 1))
                latencies.append(int(entry_id.split(b"-")[0]) - published[frame])
    finally:
        worker.terminate()
        await worker.wait()
        await redis.aclose()
        await cleanup(redis_url, prefix)
    return {
        "calls": calls,
        "intermediate_results": len(latencies),
        "frame_to_result_ms": _percentiles(latencies),
        "worker_cpu_pct": worker_cpu_pct,
    }


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0, help="speech per call")
    parser.add_argument("--calls", type=int, default=2, help="concurrent calls in the pipeline")
    parser.add_argument("--threads", type=int, default=2, help="engine runs at once")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--json", help="also write the results to this file")


def main(args: argparse.Namespace) -> int:
    audio = speech(args.seconds)
    print(f"engine: {len(audio) / (RATE * 2):.1f} s of espeak-ng speech")
    results: dict[str, Any] = {"engine": engine(audio, args.threads)}
    print(json.dumps(results["engine"], indent=2))
    print(f"pipeline: {args.calls} calls at real time")
    results["pipeline"] = asyncio.run(pipeline(audio, args.calls, args.redis_url))
    print(json.dumps(results["pipeline"], indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0
