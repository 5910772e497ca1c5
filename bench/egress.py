"""Egress pacing benchmark: continuous audio played into many calls of one gateway.

For each N (a single call first, as the baseline, then N calls), emulated calls connect to a
gateway subprocess; a bot writes ``--audio-s`` seconds of continuous audio for every call to its
out stream at once, in uneven chunks (as TTS would). The emulator plays what arrives at real
time. Reported: underruns during playback (audio that should have been continuous went dry),
whether each call played exactly the audio written, and the gateway's own send lateness
(``callstream_egress_wake_lateness_seconds``: how late it woke for each scheduled send).

    python -m bench egress --calls 200 --audio-s 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from bench import servers
from bench.ingest import cleanup
from callstream.shared.audio import chunk, is_silent
from callstream.shared.entries import OutAudio, XReadReply, encode_out
from callstream.shared.keys import Keys
from callstream.shared.settings import DEFAULT_REDIS_URL
from callstream.simulate import simulate

RATE = 16000
CHUNK_BYTES = 4410  # not a multiple of the 640-byte frame


def tone(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds)) / RATE
    freq = float(rng.uniform(200, 800))
    return (6000 * np.sin(2 * np.pi * freq * t) + 50).astype("<i2").tobytes()


async def one_run(
    server: servers.Server, calls: int, audio_s: float, redis_url: str, keys: Keys
) -> dict[str, Any]:
    ids = [f"eg-{calls}-{i}-{uuid.uuid4().hex[:6]}" for i in range(calls)]
    audio = {call_id: tone(audio_s, i) for i, call_id in enumerate(ids)}
    client = aioredis.Redis.from_url(redis_url)
    hist0 = await asyncio.to_thread(
        servers.gateway_histogram, server, "callstream_egress_wake_lateness_seconds"
    )

    async def bot() -> None:
        # Wait until every call has started, then give each its whole audio at once.
        seen: set[str] = set()
        last: bytes | str = "0-0"
        while len(seen) < calls:
            reply = cast(XReadReply, await client.xread({keys.calls: last}, block=1000))
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    if fields[b"type"] == b"started":
                        seen.add(fields[b"call_id"].decode())
        async with client.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pcm = audio[call_id]
                for i in range(0, len(pcm), CHUNK_BYTES):
                    pipe.xadd(
                        keys.call_out(call_id), encode_out(OutAudio(pcm[i : i + CHUNK_BYTES]))
                    )
            await pipe.execute()

    silence = bytes(int(RATE * 2 * (audio_s + 1.0)))
    bot_task = asyncio.create_task(bot())
    results = await simulate(
        server.ws_url, [silence], rate_hz=RATE, calls=calls, call_ids=ids, linger_s=3.0
    )
    await bot_task
    await client.aclose()
    hist = (
        await asyncio.to_thread(
            servers.gateway_histogram, server, "callstream_egress_wake_lateness_seconds"
        )
    ).minus(hist0)
    exact = 0
    for result in results:
        played = [f for f in chunk(result.recording, 640) if not is_silent(f)]
        written = chunk(audio[result.call_id], 640)
        exact += played == written
    return {
        "calls": calls,
        "completed": sum(r.completed for r in results),
        "played_exactly": exact,
        "underruns": sum(r.underruns for r in results),
        "underrun_ms": sum(r.underrun_ms for r in results),
        "wake_lateness_ms": {"p50": hist.quantile(0.5) * 1000, "p99": hist.quantile(0.99) * 1000},
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": args.redis_url, "CS_PREFIX": prefix}
    argv, port = servers.gateway(env)
    out = []
    try:
        async with servers.running("gateway", argv, port, "/healthz", env) as server:
            for calls in (1, args.calls):
                print(f"[egress] {calls} calls, {args.audio_s} s of continuous audio each")
                result = await one_run(server, calls, args.audio_s, args.redis_url, Keys(prefix))
                print(f"[egress]   {json.dumps(result)}")
                out.append(result)
    finally:
        await cleanup(args.redis_url, prefix)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--audio-s", type=float, default=5.0)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--json", help="also write the results to this file")


def main(args: argparse.Namespace) -> int:
    results = asyncio.run(run(args))
    print(
        f"\n{'calls':>6} {'completed':>9} {'exact':>6} {'underruns':>9} "
        f"{'lateness p50 ms':>16} {'p99 ms':>7}"
    )
    for r in results:
        print(
            f"{r['calls']:>6} {r['completed']:>9} {r['played_exactly']:>6} {r['underruns']:>9} "
            f"{r['wake_lateness_ms']['p50']:>16.2f} {r['wake_lateness_ms']['p99']:>7.2f}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0
