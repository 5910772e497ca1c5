"""The fleet analytics on a real Kafka-protocol broker, with real Faust: scripted events sent to
the family topics as the bridge sends them, the records read back from ``{prefix}.analytics``
with a plain consumer, as a user would, and compared with the figures computed from the same
events without Kafka (workers/kafka/analytics.py's :func:`reference`); then a restart, whose
tables come back from their changelogs.

Every wait is on records arriving, bounded; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from callstream.shared.events import Event
from callstream.workers.kafka import topics
from callstream.workers.kafka.analytics import (
    MINUTE_MS,
    Analytics,
    GroupState,
    install,
    minute_start,
    record_key,
    reference,
    without_live_fields,
)
from callstream.workers.kafka.app import embedded_worker, event_topics, make_app
from callstream.workers.kafka.config import KafkaConfig
from tests.helpers import example_event

WAIT_S = 60.0
S = 1000
Latest = dict[str, dict[str, Any]]


# --------------------------------------------------------------------------- events


class Script:
    """Events of calls, at offsets from ``t0`` (a minute's start)."""

    def __init__(self, t0: int) -> None:
        self.t0 = t0

    def at(self, event: Event, offset_ms: int) -> Event:
        return dataclasses.replace(event, time_ms=self.t0 + offset_ms)

    def started(self, call: str, offset_ms: int, **labels: str) -> Event:
        return self.at(example_event(call, "call.started", **labels), offset_ms)

    def ended(self, call: str, offset_ms: int) -> Event:
        return self.at(example_event(call, "call.ended"), offset_ms)

    def sentiment(self, call: str, offset_ms: int, score: float) -> Event:
        event = example_event(
            call,
            "nlp.sentiment",
            key=f"0:{offset_ms}",
            utterance=f"{call}:transcript:0:{offset_ms}",
            score=score,
            label="negative" if score < -0.05 else "positive" if score > 0.05 else "neutral",
            rolling=score,
        )
        return self.at(event, offset_ms)

    def intent(self, call: str, offset_ms: int, name: str) -> Event:
        event = example_event(
            call,
            "nlp.intent",
            key=f"0:{offset_ms}:{name}",
            utterance=f"{call}:transcript:0:{offset_ms}",
            name=name,
        )
        return self.at(event, offset_ms)

    def done(self, call: str, offset_ms: int, reason: str) -> Event:
        event = example_event(call, "transcribe.done", kind="transcribe", reason=reason)
        return self.at(event, offset_ms)

    def calls(self) -> list[Event]:
        """Six calls of four tenant/queues over four minutes, in the order the bridge sends
        them; with duplicates, and an insight sent before its call's start."""
        return [
            self.started("a", 5 * S, tenant="acme", queue="billing"),
            self.started("e", 10 * S),  # no labels: -/-
            self.sentiment("a", 20 * S, -0.5),
            self.intent("a", 21 * S, "billing_question"),
            self.started("b", 30 * S, tenant="acme", queue="billing"),
            self.intent("b", 40 * S, "billing_question"),
            self.intent("b", 41 * S, "cancel"),
            self.sentiment("c", 61 * S, -0.1),  # before its call.started
            self.started("c", 50 * S, tenant="acme", queue="support"),
            self.sentiment("a", 20 * S, -0.5),  # a duplicate
            self.started("c", 50 * S, tenant="acme", queue="support"),  # a duplicate
            self.sentiment("a", 70 * S, 0.25),
            self.ended("a", 95 * S),
            self.started("d", 100 * S, tenant="globex"),
            self.intent("d", 110 * S, "refund"),
            self.sentiment("f", 120 * S, 0.4),  # f's start is not in Kafka
            self.ended("f", 125 * S),
            self.sentiment("b", 130 * S, 0.8),
            self.ended("b", 150 * S),
            self.ended("b", 150 * S),  # a duplicate
            self.ended("e", 190 * S),
            self.done("d", 200 * S, "inbound_idle"),  # d's gateway died
        ]


# --------------------------------------------------------------------------- Kafka


@pytest.fixture
def config(kafka_bootstrap: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap=(kafka_bootstrap,), topic_prefix=f"cstest-{uuid.uuid4().hex[:10]}", partitions=3
    )


@contextlib.asynccontextmanager
async def running(config: KafkaConfig, app_id: str) -> AsyncIterator[Analytics]:
    """The analytics app, in this process, until the block ends."""
    app = make_app(
        config,
        app_id,
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.3,
        broker_commit_interval=0.5,
        # tansu 0.6 answers ListOffsets(latest) with the last record *batch*'s base offset + 1,
        # not the last record's offset + 1: Faust's recovery, which reads each changelog up to
        # that offset, misses the rest of the last batch. One record per batch works around it
        # (harmless on a Kafka broker).
        producer_max_batch_size=1,
    )
    installed = install(app, config, event_topics(app, config))
    worker = embedded_worker(app)
    await worker.start()
    try:
        await installed.topic.maybe_declare()  # as its agent does, but before we read it
        yield installed
    finally:
        await worker.stop()


async def send(config: KafkaConfig, events: list[Event]) -> None:
    """As the bridge does: each event to its family's topic, keyed by its call."""
    producer = AIOKafkaProducer(bootstrap_servers=list(config.bootstrap), acks="all")
    await producer.start()
    try:
        for n, event in enumerate(events):
            rec = topics.to_record(config.topic_prefix, event, f"{n + 1}-0")
            await producer.send_and_wait(
                rec.topic,
                rec.value,
                key=rec.key,
                headers=list(rec.headers),
                timestamp_ms=rec.timestamp_ms,
            )
    finally:
        await producer.stop()


class Reader:
    """``{prefix}.analytics`` from its beginning, with a plain consumer (no group)."""

    def __init__(self, config: KafkaConfig) -> None:
        self.topic = topics.topic_name(config.topic_prefix, topics.ANALYTICS)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=list(config.bootstrap), group_id=None, enable_auto_commit=False
        )
        self.latest: Latest = {}  # the latest record of each key
        self.records: list[dict[str, Any]] = []

    async def start(self) -> None:
        await self.consumer.start()
        assert self.topic in await self.consumer.topics()  # running() saw to it
        parts = self.consumer.partitions_for_topic(self.topic)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def until(self, expected: Latest, groups: dict[str, GroupState], what: str) -> Latest:
        """Read until the latest records have ``expected``'s figures and each tenant/queue's
        newest record says ``groups``; at most WAIT_S. The latest records."""
        deadline = time.monotonic() + WAIT_S
        while figures(self.latest) != figures(expected) or states(self.latest) != groups:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not within {WAIT_S} s\n" + self.diff(expected, groups)
                )
            batch = await self.consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for message in messages:
                    value = json.loads(message.value)
                    self.latest[message.key.decode()] = value
                    self.records.append(value)
        return self.latest

    def diff(self, expected: Latest, groups: dict[str, GroupState]) -> str:
        got, want = figures(self.latest), figures(expected)
        lines = [f"tenant/queues: {states(self.latest)}, expected {groups}"]
        for key in sorted(set(got) | set(want)):
            if got.get(key) != want.get(key):
                lines.append(f"{key}:\n  got      {got.get(key)}\n  expected {want.get(key)}")
        return "\n".join(lines)


def figures(latest: Latest) -> Latest:
    return {key: without_live_fields(value) for key, value in latest.items()}


def newest_by_group(latest: Latest) -> dict[str, dict[str, Any]]:
    """Each tenant/queue's record with the highest version: its state after its last fact."""
    newest: dict[str, dict[str, Any]] = {}
    for value in latest.values():
        group = f"{value['tenant']}/{value['queue']}"
        if group not in newest or value["version"] > newest[group]["version"]:
            newest[group] = value
    return newest


def states(latest: Latest) -> dict[str, GroupState]:
    return {
        group: GroupState(active=value["active"], version=value["version"])
        for group, value in newest_by_group(latest).items()
    }


def assert_each_fact_applied_once(
    records: list[dict[str, Any]], expected: dict[str, GroupState]
) -> None:
    """Every tenant/queue's records carry the versions 1, 2, ... up to its number of facts:
    each fact was applied once (none lost, none counted again)."""
    for group, state in expected.items():
        versions = {r["version"] for r in records if f"{r['tenant']}/{r['queue']}" == group}
        assert versions == set(range(1, state.version + 1)), group


def four_minutes_ago() -> int:
    return minute_start(int(time.time() * 1000)) - 4 * MINUTE_MS


@contextlib.asynccontextmanager
async def reading(config: KafkaConfig) -> AsyncIterator[Reader]:
    reader = Reader(config)
    await reader.start()
    try:
        yield reader
    finally:
        await reader.stop()


# --------------------------------------------------------------------------- tests


async def test_the_published_figures_are_those_of_the_events(config: KafkaConfig) -> None:
    script = Script(four_minutes_ago())
    events = script.calls()
    expected, expected_states = reference(events)
    async with running(config, f"cstest-{uuid.uuid4().hex[:10]}"), reading(config) as reader:
        await send(config, events)
        latest = await reader.until(expected, expected_states, "the figures of the events")
    # By hand, a few of them.
    t0 = script.t0

    def minute(group: str, k: int) -> dict[str, Any]:
        return latest[record_key(group, t0 + k * MINUTE_MS)]

    billing = [minute("acme/billing", k) for k in range(3)]
    assert [(r["started"], r["ended"]) for r in billing] == [(2, 0), (0, 1), (0, 1)]
    assert billing[0]["sentiment"] == {"count": 1, "sum": -0.5, "mean": -0.5}  # not twice
    assert billing[0]["intents"] == {"billing_question": 2, "cancel": 1}
    assert billing[1]["handle_time_s"]["mean"] == 90.0  # a: 5 s -> 95 s
    assert billing[2]["rolling"]["sentiment"]["mean"] == 0.1833  # (-0.5 + 0.25 + 0.8) / 3
    assert billing[2]["rolling"]["handle_time_s"]["mean"] == 105.0  # (90 + 120) / 2
    assert minute("acme/support", 1)["sentiment"]["mean"] == -0.1  # labelled, though early
    assert minute("-/-", 3)["handle_time_s"] == {"count": 1, "sum": 180.0, "mean": 180.0}
    assert minute("-/-", 2)["ended"] == 1  # f: no start, so no handle time
    assert minute("globex/-", 3)["ended"] == 1  # d: inbound_idle
    assert {g: s.active for g, s in states(latest).items()} == {
        "acme/billing": 0,
        "acme/support": 1,
        "globex/-": 0,
        "-/-": 0,
    }
    assert_each_fact_applied_once(reader.records, expected_states)


@pytest.mark.timeout(240)
async def test_after_a_restart_the_tables_go_on_from_their_changelogs(
    config: KafkaConfig,
) -> None:
    script = Script(four_minutes_ago())
    first = script.calls()
    expected, expected_states = reference(first)
    app_id = f"cstest-{uuid.uuid4().hex[:10]}"
    async with running(config, app_id), reading(config) as reader:
        await send(config, first)
        await reader.until(expected, expected_states, "the figures before the restart")
    then = [
        script.ended("b", 150 * S),  # a duplicate again: b's state says it ended
        script.sentiment("a", 20 * S, -0.5),  # likewise: a's state has its id
        script.sentiment("a", 100 * S, 0.5),  # after a's end, in a minute that has figures
        script.ended("c", 170 * S),  # c started at 50 s: its state has its start and labels
    ]
    expected, expected_states = reference(first + then)
    assert expected_states["acme/support"] == GroupState(active=0, version=3)
    async with running(config, app_id), reading(config) as reader:
        await send(config, then)
        latest = await reader.until(expected, expected_states, "the figures after the restart")
    minute_1 = latest[record_key("acme/billing", script.t0 + MINUTE_MS)]
    assert minute_1["sentiment"] == {"count": 2, "sum": 0.75, "mean": 0.375}  # 1 + 1, not 0 + 1
    support = latest[record_key("acme/support", script.t0 + 2 * MINUTE_MS)]
    assert (support["ended"], support["handle_time_s"]["mean"]) == (1, 120.0)
    assert (support["active"], support["version"]) == (0, 3)  # 1 - 1: not 0 - 1
    assert support["rolling"]["started"] == 1
    assert_each_fact_applied_once(reader.records, expected_states)
