"""``callstream worker kafka`` against a real Kafka-protocol broker (tansu, or the Kafka at
KAFKA_BOOTSTRAP), a real Redis and real processes: every event of cs:insights on its family's
topic, complete and in per-call order, read back with plain aiokafka as a user would; nothing
lost when the bridge is killed mid-stream and restarted; nothing unredacted in redaction mode."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.simulate import simulate
from callstream.speech import piper_available, say
from callstream.workers.kafka import topics
from tests.helpers import (
    events,
    example_event,
    gateway_process,
    stop_process,
    wait_for_event,
    worker_process,
)

RATE = 16000


@contextlib.asynccontextmanager
async def bridge_process(
    settings: Settings, bootstrap: str, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``callstream worker kafka`` until it mirrors (its group made, its topics declared);
    SIGTERM at the end: it must exit 0."""
    proc = await start_bridge(settings, bootstrap, *args, env=env)
    try:
        yield proc
    finally:
        await stop_process(proc)


async def start_bridge(
    settings: Settings, bootstrap: str, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "worker",
        "kafka",
        "--no-analytics",
        *args,
        env={
            **os.environ,
            "REDIS_URL": settings.redis_url,
            "CS_PREFIX": settings.prefix,
            "KAFKA_BOOTSTRAP": bootstrap,
            "CS_KAFKA_PARTITIONS": "2",
            # tansu holds a JoinGroup for half the session timeout (Kafka does not).
            "CS_KAFKA_SESSION_TIMEOUT_S": "2",
        }
        | (env or {}),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = []
    async with asyncio.timeout(60):
        while b"mirroring" not in (line := await proc.stderr.readline()):
            seen.append(line)
            assert line, b"".join(seen).decode()
    asyncio.get_running_loop().create_task(_drain(proc.stderr))
    return proc


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


class Topics:
    """Every record of the test's family topics, read with a plain aiokafka consumer from the
    beginning (no group: as a user's consumer would, assigned every partition)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._names = [topics.topic_name(prefix, family) for family in topics.FAMILIES]
        self.records: list[Any] = []

    async def __aenter__(self) -> Topics:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def read_until(self, done: Any, timeout_s: float = 60) -> list[Any]:
        """Read until ``done(records)`` holds (bounded); the records."""
        async with asyncio.timeout(timeout_s):
            if not self._consumer.assignment():
                await self._assign()
            while not done(self.records):
                batches = await self._consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    self.records.extend(batch)
        return self.records

    async def _assign(self) -> None:
        """Every partition of every family topic (the bridge declared them all before it
        started mirroring), from offset 0, once: a new assignment would reset positions."""
        client = self._consumer._client  # aiokafka has no public call to refresh some topics
        while True:
            await client._metadata_update(client.cluster, self._names)
            found = {name: client.cluster.partitions_for_topic(name) for name in self._names}
            if all(found.values()):
                break
            await asyncio.sleep(0.1)
        partitions = [TopicPartition(n, p) for n, ps in found.items() for p in ps or ()]
        self._consumer.assign(partitions)
        for partition in partitions:  # offset 0: the start (no ListOffsets round trip)
            self._consumer.seek(partition, 0)


def header(record: Any, name: str) -> str:
    value: bytes = dict(record.headers)[name]
    return value.decode()


def event_ids(records: Iterable[Any]) -> list[str]:
    return [header(r, topics.EVENT_ID) for r in records]


def per_call(records: Iterable[Any]) -> dict[tuple[str, str], list[str]]:
    """Event ids per (topic, call), in the order the topic holds them."""
    order: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        order[record.topic, record.key.decode()].append(header(record, topics.EVENT_ID))
    return order


def expected_order(published: list[Event], prefix: str) -> dict[tuple[str, str], list[str]]:
    order: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for event in published:
        topic = topics.topic_name(prefix, topics.family(event.type))
        order[topic, event.call_id].append(event.id)
    return order


def speech(lines: Iterable[str]) -> bytes:
    gap = bytes(RATE)
    audio = bytearray(bytes(RATE // 2))
    for line in lines:
        audio += say(line, RATE) + gap
    audio += bytes((-len(audio)) % (RATE // 50 * 2))
    return bytes(audio)


@pytest.mark.timeout(240)
async def test_scripted_calls_arrive_on_kafka_complete_and_in_per_call_order(
    settings: Settings, redis: aioredis.Redis, kafka_bootstrap: str
) -> None:
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    first = await asyncio.to_thread(speech, ["hello i would like to pay my bill", "thank you"])
    second = await asyncio.to_thread(speech, ["please cancel my order", "goodbye"])
    prefix = settings.prefix
    async with (
        bridge_process(settings, kafka_bootstrap),
        gateway_process(settings) as url,
        worker_process(settings, "transcribe"),
        worker_process(settings, "nlp"),
    ):
        results = await asyncio.gather(
            simulate(url, [first], rate_hz=RATE, call_ids=["kafka-1"]),
            simulate(url, [second], rate_hz=RATE, call_ids=["kafka-2"]),
        )
        assert all(r[0].error is None for r in results)
        for call in ("kafka-1", "kafka-2"):
            await wait_for_event(redis, settings.keys.call_events(call), "nlp.done", 90)
        published = [
            e for e in await events(redis, settings.keys.insights) if e.call_id.startswith("kafka-")
        ]
        wanted = {e.id for e in published}
        async with Topics(kafka_bootstrap, prefix) as kafka:
            records = await kafka.read_until(lambda rs: wanted <= set(event_ids(rs)), 60)
    assert {"transcript", "nlp.sentiment", "nlp.summary", "call.started", "call.ended"} <= {
        e.type for e in published
    }
    got = per_call(records)
    assert got == expected_order(published, prefix)  # complete, none twice, in per-call order
    by_id = {e.id: e for e in published}
    for record in records:  # as published: the event's JSON, its call as key, its time
        event = Event.from_json(record.value)
        assert event == by_id[event.id]
        assert record.key.decode() == event.call_id
        assert record.timestamp == event.time_ms
        assert header(record, topics.EVENT_TYPE) == event.type
        assert json.loads(record.value)["id"] == header(record, topics.EVENT_ID)


async def add_events(redis: aioredis.Redis, key: str, batch: list[Event]) -> None:
    pipe = redis.pipeline(transaction=False)
    for event in batch:
        pipe.xadd(key, dict(event.fields()))
    await pipe.execute()


def scripted(call: str, n: int) -> list[Event]:
    """``n`` valid events of one call with distinct ids, in order."""
    return [example_event(call, "nlp.sentiment", key=f"1:{1000 + i}") for i in range(n)]


@pytest.mark.timeout(240)
async def test_a_bridge_killed_mid_stream_and_restarted_loses_nothing(
    settings: Settings, redis: aioredis.Redis, kafka_bootstrap: str
) -> None:
    key = settings.keys.insights
    calls = [f"kill-{i}" for i in range(4)]
    streams = {call: scripted(call, 1500) for call in calls}
    published = [e for group in zip(*streams.values(), strict=True) for e in group]
    async with Topics(kafka_bootstrap, settings.prefix) as kafka:
        bridge = await start_bridge(settings, kafka_bootstrap, "--consumer", "b1")
        try:
            writer = asyncio.create_task(write_slowly(redis, key, published))
            # Mid-stream: a part is on Kafka, more is coming.
            await kafka.read_until(lambda rs: len(rs) >= 1000, 60)
            bridge.send_signal(signal.SIGKILL)
            assert await bridge.wait() == -signal.SIGKILL
            bridge = await start_bridge(settings, kafka_bootstrap, "--consumer", "b1")
            await writer
            wanted = {e.id for e in published}
            records = await kafka.read_until(lambda rs: wanted <= set(event_ids(rs)), 120)
        finally:
            await stop_process(bridge)
    ids = event_ids(records)
    assert set(ids) == {e.id for e in published}  # nothing lost
    counts = collections.Counter(ids)
    repeated = [i for i, n in counts.items() if n > 1]
    # Duplicates only from the batch in flight when it was killed (at most one batch of 500),
    # each with its original event id (and the entry it came from).
    assert len(repeated) <= 500
    redis_ids = collections.defaultdict(set)
    for record in records:
        redis_ids[header(record, topics.EVENT_ID)].add(header(record, topics.REDIS_ID))
    assert all(len(entries) == 1 for entries in redis_ids.values())
    # Per call, the first time each event arrived is the order it was published in.
    for (_, call), arrived in per_call(records).items():
        firsts = list(dict.fromkeys(arrived))
        assert firsts == [e.id for e in streams[call]]


async def write_slowly(redis: aioredis.Redis, key: str, published: list[Event]) -> None:
    """As workers do: a few hundred events at a time, not all at once."""
    for start in range(0, len(published), 200):
        await add_events(redis, key, published[start : start + 200])
        await asyncio.sleep(0.02)


@pytest.mark.timeout(120)
async def test_in_redaction_mode_nothing_unredacted_reaches_kafka(
    settings: Settings, redis: aioredis.Redis, kafka_bootstrap: str
) -> None:
    call = "redact-1"
    final = example_event(
        call,
        "transcript",
        key="0:100",
        text="my card number is 4111 1111 1111 1111",
        resultStatus="Final",
    )
    partial = example_event(
        call, "transcript", key="0:50", text="my card number is 4111", resultStatus="Intermediate"
    )
    tone = example_event(call, "dtmf", key="1", tone="4")
    started = example_event(call, "call.started")
    async with (
        bridge_process(settings, kafka_bootstrap, env={"CS_REDACT": "1"}),
        Topics(kafka_bootstrap, settings.prefix) as kafka,
    ):
        await add_events(redis, settings.keys.insights, [started, partial, tone, final])
        records = await kafka.read_until(
            lambda rs: {started.id, final.id} <= set(event_ids(rs)), 60
        )
        # What came after them came too: nothing else is on its way.
        await add_events(redis, settings.keys.insights, [example_event(call, "call.ended")])
        records = await kafka.read_until(lambda rs: len(rs) >= 3, 30)
    assert sorted(event_ids(records)) == sorted(
        [started.id, final.id, f"{call}:ended"]
    )  # no partial, no DTMF
    [redacted] = [Event.from_json(r.value) for r in records if r.value and b"transcript" in r.value]
    assert "4111" not in redacted.data["text"]
    assert all(b"4111" not in r.value for r in records)


async def test_a_bridge_told_to_stop_exits_0(
    settings: Settings, redis: aioredis.Redis, kafka_bootstrap: str
) -> None:
    proc = await start_bridge(settings, kafka_bootstrap)
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        assert await proc.wait() == 0
