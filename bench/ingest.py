"""Ingest benchmark: the gateway against a bare ``websockets`` server, in the same run.

Two measurements, each first against the bare parse-only server (the ceiling) and then against
the gateway (parse + batched XADD into a real Redis):

* max rate — a few connections send frames back to back; frames/s processed by the server
  (the gateway's figure counts only frames whose XADD Redis acknowledged). Several rounds, each
  running both servers in fresh processes one after the other; medians are compared;
* real time — N concurrent 16 kHz calls at 50 frames/s each; ingest latency p50/p99 (socket
  receive → XADD acknowledged, from the gateway's histogram), frames lost (sent − stored in Redis),
  memory per call (RSS growth / N), server CPU.

    python -m bench ingest --calls 500 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from bench import load, servers
from callstream.shared.settings import DEFAULT_REDIS_URL


async def _server_frames(server: servers.Server) -> int:
    if server.name == "bare":
        return await asyncio.to_thread(servers.bare_frames, server)
    # Frames whose XADD Redis acknowledged.
    return int(await asyncio.to_thread(servers.gateway_counter, server))


async def max_rate(
    server: servers.Server, conns_n: int, seconds: float, rate_hz: int
) -> dict[str, Any]:
    conns = await load.open_calls(server.ws_url, conns_n, rate_hz, prefix="max")
    messages = load.frame_messages(rate_hz)
    try:
        before = await _server_frames(server)
        cpu0 = server.cpu_seconds()
        started = time.perf_counter()
        stats = await load.run_maxrate(conns, messages, seconds)
        # The server may still be working through a backlog: count until it is done.
        after = await _settle(server, before + stats.frames_sent)
        elapsed = time.perf_counter() - started
        cpu = server.cpu_seconds() - cpu0
    finally:
        await load.close_calls(conns)
    processed = after - before
    return {
        "connections": conns_n,
        "frames_sent": stats.frames_sent,
        "frames_processed": processed,
        "frames_per_s": processed / elapsed,
        "server_cpu_s": cpu,
        "frames_per_cpu_s": processed / cpu if cpu else 0.0,
    }


async def _settle(server: servers.Server, expected: int) -> int:
    """The server's frame count once it reached ``expected`` or made no progress for 3 s."""
    last = await _server_frames(server)
    still = 0
    while last < expected and still < 15:
        await asyncio.sleep(0.2)
        now = await _server_frames(server)
        still = still + 1 if now == last else 0
        last = now
    return last


async def real_time(
    server: servers.Server, calls: int, seconds: float, rate_hz: int, *, redis_url: str, prefix: str
) -> dict[str, Any]:
    rss0 = server.rss_bytes()
    conns = await load.open_calls(server.ws_url, calls, rate_hz, prefix="rt")
    messages = load.frame_messages(rate_hz)
    try:
        before = await _server_frames(server)
        hist0 = (
            await asyncio.to_thread(servers.gateway_histogram, server)
            if server.name == "gateway"
            else None
        )
        cpu0 = server.cpu_seconds()
        stats = await load.run_realtime(conns, messages, seconds)
        after = await _settle(server, before + stats.frames_sent)
        cpu = server.cpu_seconds() - cpu0
        rss1 = server.rss_bytes()
    finally:
        await load.close_calls(conns)
    result: dict[str, Any] = {
        "calls": calls,
        "frames_sent": stats.frames_sent,
        "frames_processed": after - before,
        "memory_per_call_kib": (rss1 - rss0) / calls / 1024,
        "server_cpu_pct": 100 * cpu / stats.seconds,
        "generator_lateness_ms": {
            "p50": float(np.percentile(stats.lateness_ms, 50)),
            "p99": float(np.percentile(stats.lateness_ms, 99)),
        },
    }
    if hist0 is not None:
        hist = (await asyncio.to_thread(servers.gateway_histogram, server)).minus(hist0)
        result["ingest_latency_ms"] = {
            "p50": hist.quantile(0.50) * 1000,
            "p99": hist.quantile(0.99) * 1000,
        }
        client = aioredis.Redis.from_url(redis_url)
        try:
            stored = 0
            async for key in client.scan_iter(match=f"{prefix}:call:rt-*:in", count=1000):
                entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(key))
                stored += sum(1 for _, fields in entries if fields[b"kind"] == b"audio")
        finally:
            await client.aclose()
        result["frames_stored"] = stored
        result["frames_lost"] = stats.frames_sent - stored
    return result


async def cleanup(redis_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()


SERVERS = (
    ("bare", servers.bare, "/stats"),
    ("gateway", servers.gateway, "/healthz"),
)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    # The max-rate rounds send as fast as the server takes: lift the gateway's per-call rate
    # limit (CS_MAX_MESSAGES_PER_S), which closes such a call within seconds.
    env = {"REDIS_URL": args.redis_url, "CS_PREFIX": prefix, "CS_MAX_MESSAGES_PER_S": "1000000000"}
    results: dict[str, Any] = {"rate_hz": args.rate}
    try:
        for name, factory, ready in SERVERS:
            argv, port = factory(env)
            async with servers.running(name, argv, port, ready, env) as server:
                print(f"[{name}] real time: {args.calls} calls, {args.seconds} s")
                rt = await real_time(
                    server,
                    args.calls,
                    args.seconds,
                    args.rate,
                    redis_url=args.redis_url,
                    prefix=prefix,
                )
                print(f"[{name}]   {json.dumps(rt)}")
                results[name] = {"real_time": rt, "max_rate_rounds": []}
        # Max rate: each round runs both servers, each in a fresh process, one after the
        # other; the medians over the rounds are compared (the machine is shared and noisy).
        for round_no in range(1, args.maxrate_rounds + 1):
            for name, factory, ready in SERVERS:
                argv, port = factory(env)
                async with servers.running(name, argv, port, ready, env) as server:
                    mr = await max_rate(server, args.maxrate_conns, args.maxrate_seconds, args.rate)
                print(
                    f"[{name}] max rate round {round_no}/{args.maxrate_rounds}: "
                    f"{mr['frames_per_s']:.0f} frames/s, {mr['frames_per_cpu_s']:.0f} per CPU-s"
                )
                results[name]["max_rate_rounds"].append(mr)
    finally:
        await cleanup(args.redis_url, prefix)
    for name, _, _ in SERVERS:
        rounds = results[name]["max_rate_rounds"]
        results[name]["max_rate"] = {
            "frames_per_s": float(np.median([r["frames_per_s"] for r in rounds])),
            "frames_per_cpu_s": float(np.median([r["frames_per_cpu_s"] for r in rounds])),
        }
    results["max_rate_ratio"] = (
        results["gateway"]["max_rate"]["frames_per_s"] / results["bare"]["max_rate"]["frames_per_s"]
    )
    results["max_rate_cpu_ratio"] = (
        results["gateway"]["max_rate"]["frames_per_cpu_s"]
        / results["bare"]["max_rate"]["frames_per_cpu_s"]
    )
    return results


def report(results: dict[str, Any]) -> str:
    bare, gw = results["bare"], results["gateway"]
    rt = gw["real_time"]
    lines = [
        "",
        f"{'':34} {'bare websockets':>16} {'gateway':>12}",
        f"{'max-rate frames/s (median)':34} {bare['max_rate']['frames_per_s']:>16.0f} "
        f"{gw['max_rate']['frames_per_s']:>12.0f}",
        f"{'gateway / bare (target >= 0.8)':34} {'':>16} {results['max_rate_ratio']:>12.2f}",
        f"{'max-rate frames per server CPU-s':34} {bare['max_rate']['frames_per_cpu_s']:>16.0f} "
        f"{gw['max_rate']['frames_per_cpu_s']:>12.0f}",
        f"{'  gateway / bare':34} {'':>16} {results['max_rate_cpu_ratio']:>12.2f}",
        f"{'real-time calls':34} {bare['real_time']['calls']:>16} {rt['calls']:>12}",
        f"{'  server CPU %':34} {bare['real_time']['server_cpu_pct']:>16.0f} "
        f"{rt['server_cpu_pct']:>12.0f}",
        f"{'  memory per call KiB':34} {bare['real_time']['memory_per_call_kib']:>16.1f} "
        f"{rt['memory_per_call_kib']:>12.1f}",
        f"{'  ingest latency p50 ms':34} {'':>16} {rt['ingest_latency_ms']['p50']:>12.2f}",
        f"{'  ingest latency p99 ms (< 20)':34} {'':>16} {rt['ingest_latency_ms']['p99']:>12.2f}",
        f"{'  frames sent / lost':34} {'':>16} {rt['frames_sent']:>6}/{rt['frames_lost']:<5}",
        f"{'  generator lateness p99 ms':34} "
        f"{bare['real_time']['generator_lateness_ms']['p99']:>16.1f} "
        f"{rt['generator_lateness_ms']['p99']:>12.1f}",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=500, help="real-time calls (default 500)")
    parser.add_argument("--seconds", type=float, default=20.0, help="real-time run length")
    parser.add_argument("--maxrate-conns", type=int, default=16)
    parser.add_argument("--maxrate-seconds", type=float, default=10.0)
    parser.add_argument(
        "--maxrate-rounds", type=int, default=3, help="alternating max-rate rounds (median)"
    )
    parser.add_argument("--rate", type=int, choices=(16000, 24000), default=16000)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--json", help="also write the results to this file")


def main(args: argparse.Namespace) -> int:
    results = asyncio.run(run(args))
    print(report(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0
