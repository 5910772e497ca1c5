"""``callstream tail --kafka`` as a process against a real Kafka-protocol broker: the analytics
records of ``{prefix}.analytics`` for people and as JSON, where it starts, a topic it waits for
(without creating it), and event topics shown as events from Redis are.

Every wait is on the process's output, bounded; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import uuid
from contextlib import AbstractAsyncContextManager as AsyncContextManager

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from callstream.shared.events import Event, parse_iso_ms
from callstream.workers.kafka import topics
from callstream.workers.kafka.analytics import (
    MINUTE_MS,
    GroupState,
    Stats,
    encode_record,
    record,
    record_key,
)
from tests.helpers import example_event
from tests.integration.test_tail import TailProcess, tail_with

MINUTE = parse_iso_ms("2025-03-14T09:26:00Z") or 0


@pytest.fixture
def prefix() -> str:
    return f"cstest-{uuid.uuid4().hex[:10]}"


def tail_process(bootstrap: str, prefix: str, *args: str) -> AsyncContextManager[TailProcess]:
    return tail_with({"KAFKA_BOOTSTRAP": bootstrap, "CS_PREFIX": prefix}, *args)


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def send(bootstrap: str, topic: str, *records: tuple[bytes, bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def aggregate(group: str, minute: int, started: int, active: int) -> tuple[bytes, bytes]:
    """A record as the analytics publish it: key and value."""
    tenant, queue = group.split("/")
    stats = Stats(started=started)
    value = record(tenant, queue, minute, minute=stats, rolling=stats, group=GroupState(active, 1))
    return record_key(group, minute).encode(), encode_record(value)


BILLING = Stats(
    started=3,
    ended=2,
    sentiments=7,
    sentiment_micros=-840_000,
    intents={"billing_question": 3, "cancel": 1, "refund": 1, "late_fee": 1},
    handled=2,
    handle_ms=366_000,
)
BILLING_5_MIN = Stats(
    started=12, ended=9, sentiments=31, sentiment_micros=-2_480_000, handled=9, handle_ms=1_539_000
)


def billing() -> tuple[bytes, bytes]:
    value = record(
        "acme",
        "billing",
        MINUTE,
        minute=BILLING,
        rolling=BILLING_5_MIN,
        group=GroupState(active=5, version=42),
    )
    return record_key("acme/billing", MINUTE).encode(), encode_record(value)


async def test_analytics_records_for_people_and_as_json(kafka_bootstrap: str, prefix: str) -> None:
    analytics = topics.topic_name(prefix, topics.ANALYTICS)
    await create_topic(kafka_bootstrap, analytics)
    first, second = billing(), aggregate("globex/-", MINUTE + MINUTE_MS, 1, 1)
    junk = (b"junk", b"not json")
    await send(kafka_bootstrap, analytics, first, first, second, junk)  # the first twice
    async with tail_process(kafka_bootstrap, prefix, "--kafka", "--from-start") as tail:
        lines = await tail.lines(3)
        code, stderr = await tail.stop(signal.SIGINT)
    assert lines == [
        "09:26  acme/billing  active 5  started 3  ended 2  sentiment -0.12 (7)  handle 3:03 (2)"
        "  intents billing_question 3, cancel 1, late_fee 1, +1"
        "  | 5 min: started 12, ended 9, sentiment -0.08 (31), handle 2:51 (9)",
        "09:27  globex/-  active 1  started 1  ended 0  sentiment -  handle -"
        "  | 5 min: started 1, ended 0, sentiment -, handle -",
        f"skipped entry {analytics}[0]@3: Expecting value: line 1 column 1 (char 0)",
    ]
    assert (code, stderr) == (0, "")
    async with tail_process(
        kafka_bootstrap, prefix, "--kafka", "--json", "--from-beginning"
    ) as tail:
        lines = await tail.lines(2)
        problem = await tail.stderr_line()
        code, _ = await tail.stop(signal.SIGTERM)
    assert [json.loads(line) for line in lines] == [json.loads(first[1]), json.loads(second[1])]
    assert lines[0] == first[1].decode()  # the record as it is
    assert problem.startswith(f"callstream tail: skipped record {analytics}[0]@3: ")
    assert code == 0


async def test_by_default_only_records_sent_after_it_started_are_shown(
    kafka_bootstrap: str, prefix: str
) -> None:
    analytics = topics.topic_name(prefix, topics.ANALYTICS)
    await create_topic(kafka_bootstrap, analytics)
    old = aggregate("acme/old", MINUTE, 1, 1)
    await send(kafka_bootstrap, analytics, old)
    async with tail_process(kafka_bootstrap, prefix, "--kafka", "--json") as tail:
        # It says nothing when it is ready: send until a record comes out.
        sent: list[bytes] = []
        first = None
        for n in range(1, 200):
            sent.append(aggregate("acme/new", MINUTE, n, n)[1])
            await send(kafka_bootstrap, analytics, (b"acme/new", sent[-1]))
            with contextlib.suppress(TimeoutError):
                first = await tail.line(timeout_s=0.2)
                break
        assert first is not None, "tail printed nothing"
        shown = [value.decode() for value in sent]
        assert first in shown
        rest = shown[shown.index(first) + 1 :]
        assert await tail.lines(len(rest)) == rest  # nothing skipped, in order
        last = aggregate("acme/new", MINUTE, 999, 0)
        await send(kafka_bootstrap, analytics, last)
        assert await tail.line() == last[1].decode()
        code, stderr = await tail.stop()
    assert (code, stderr) == (0, "")


async def test_it_waits_for_the_topic_without_creating_it(
    kafka_bootstrap: str, prefix: str
) -> None:
    analytics = topics.topic_name(prefix, topics.ANALYTICS)
    async with tail_process(kafka_bootstrap, prefix, "--kafka", "--json") as tail:
        assert await tail.stderr_line() == f"callstream tail: waiting for topic {analytics}…"
        assert analytics not in await topic_names(kafka_bootstrap)
        await create_topic(kafka_bootstrap, analytics, partitions=3)
        sent = aggregate("acme/billing", MINUTE, 2, 2)
        await send(kafka_bootstrap, analytics, sent)  # before tail saw the topic: still shown
        assert await tail.line() == sent[1].decode()
        code, stderr = await tail.stop()
    assert (code, stderr) == (0, "")


def at(event: Event, offset_ms: int) -> Event:
    return dataclasses.replace(event, time_ms=MINUTE + offset_ms)


async def test_event_topics_are_shown_as_events_from_redis_are(
    kafka_bootstrap: str, prefix: str
) -> None:
    for family in (topics.LIFECYCLE, topics.INSIGHTS):
        await create_topic(kafka_bootstrap, topics.topic_name(prefix, family), partitions=2)
    ours = [
        at(example_event("a", "call.started", tenant="acme"), 0),
        at(example_event("a", "nlp.intent"), 1000),
        at(example_event("a", "call.ended"), 2000),
    ]
    theirs = [at(example_event("b", "call.started"), 0), at(example_event("b", "nlp.intent"), 5)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for n, event in enumerate([*ours, *theirs, ours[1]]):  # a's intent twice
            rec = topics.to_record(prefix, event, f"{n + 1}-0")
            await producer.send_and_wait(
                rec.topic, rec.value, key=rec.key, headers=list(rec.headers)
            )
    finally:
        await producer.stop()
    args = ("--kafka-topics", "lifecycle,insights", "--call", "a", "--json", "--from-start")
    async with tail_process(kafka_bootstrap, prefix, *args) as tail:
        lines = await tail.lines(len(ours))
        later = at(example_event("a", "dtmf"), 3000)
        rec = topics.to_record(prefix, later, "9-0")
        await send(kafka_bootstrap, rec.topic, (rec.key, rec.value))
        assert await tail.line() == later.to_json()  # the duplicate was not shown
        code, stderr = await tail.stop()
    # Each topic in its order; the two topics interleave as they come.
    assert sorted(lines) == sorted(event.to_json() for event in ours)
    assert lines.index(ours[0].to_json()) < lines.index(ours[2].to_json())
    assert (code, stderr) == (0, "")


async def test_an_unknown_topic_family_is_a_usage_error(kafka_bootstrap: str, prefix: str) -> None:
    async with tail_process(kafka_bootstrap, prefix, "--kafka-topics", "insights,nope") as tail:
        assert tail.proc.stderr is not None
        async with asyncio.timeout(15):
            code = await tail.proc.wait()
            stderr = (await tail.proc.stderr.read()).decode()
    assert code == 2
    assert "--kafka-topics: no topic 'nope'" in stderr
