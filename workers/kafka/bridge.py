"""The Redis side of the Kafka bridge: every event of cs:insights onto its Kafka topic, at least
once.

The bridge reads cs:insights with a consumer group of its own (``{CS_KAFKA_GROUP}``, default
``kafka``), so the gateways never trim entries it has not acknowledged (bus/retention.py), and
acknowledges a batch (XACK) only once Kafka has acknowledged every record of it. A bridge that
dies leaves its batch pending: the next one (the same consumer name, or another after
CLAIM_IDLE_S) sends it again, so duplicates come only from that window, each with its event id
in the ``event-id`` header. Per-call order holds: records are keyed by call id, sent in stream
order, and a batch that fails is sent again whole before anything newer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from faust.types import TopicT
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import ResponseError

from callstream.bus.url import dead_connection_retry
from callstream.shared.errors import EventError
from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.workers.kafka import topics
from callstream.workers.kafka.config import KafkaConfig

log = logging.getLogger(__name__)

BATCH = 500  # entries read (and sent to Kafka) at a time
BLOCK_MS = 1000  # an XREADGROUP waits this long for new entries
CLAIM_IDLE_S = 60.0  # pending entries of another consumer idle this long are taken over
RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # after a failure, before the batch is sent again
KAFKA_ACK_TIMEOUT_S = 30.0  # a batch Kafka has not acknowledged by then is sent again

View = Callable[[Event], Event | None]  # CS_REDACT=1: what may leave Redis (None: nothing)


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "callstream_kafka_records_total",
            "Records Kafka acknowledged, per topic family",
            ["family"],
            registry=registry,
        )
        self.withheld = Counter(
            "callstream_kafka_withheld_total",
            "Events not sent because redaction mode (CS_REDACT=1) keeps them off Kafka",
            registry=registry,
        )
        self.rejected = Counter(
            "callstream_kafka_rejected_total",
            "Entries of cs:insights that are not events (acknowledged and skipped)",
            registry=registry,
        )
        self.failures = Counter(
            "callstream_kafka_failures_total",
            "Batches that failed (Kafka or Redis) and were sent again",
            registry=registry,
        )
        self.latency = Histogram(
            "callstream_kafka_latency_seconds",
            "From the entry's addition to cs:insights to Kafka's acknowledgement of its record",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.pending = Gauge(
            "callstream_kafka_batch_entries",
            "Entries of the batch in flight to Kafka",
            registry=registry,
        )


Entry = tuple[str, Mapping[bytes, bytes]]


class Bridge:
    """Mirrors ``settings.keys.insights`` to ``event_topics`` until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        config: KafkaConfig,
        event_topics: Mapping[str, TopicT],
        *,
        group: str = "kafka",
        consumer: str = "bridge",
        from_start: bool = False,
        view: View | None = None,
        registry: CollectorRegistry | None = None,
        batch: int = BATCH,
        on_acked: Callable[[Sequence[str], float], None] | None = None,
    ) -> None:
        """``on_acked(entry ids, epoch ms)``: called when a batch has been acknowledged by
        Kafka (the benchmark measures entry → acknowledgement with it)."""
        self._settings = settings
        self._config = config
        self._topics = event_topics
        self._key = settings.keys.insights
        self.group = group
        self._consumer = consumer
        self._from_start = from_start
        self._view = view
        self._batch = batch
        self._on_acked = on_acked
        self.metrics = BridgeMetrics(registry or CollectorRegistry())
        self._stopping = asyncio.Event()
        self._failure: str | None = None
        self._redis: aioredis.Redis | None = None
        self.sent = 0  # records Kafka acknowledged

    # ---------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Finish the batch in flight (acknowledged in Redis once Kafka acknowledged it), then
        return from :meth:`run`."""
        self._stopping.set()

    def readiness(self) -> tuple[bool, str]:
        if self._stopping.is_set():
            return False, "stopping"
        if self._failure is not None:
            return False, self._failure
        return True, "ready"

    async def run(self) -> None:
        self._redis = aioredis.Redis.from_url(
            self._settings.redis_url,
            socket_timeout=None,
            socket_connect_timeout=5,
            retry=dead_connection_retry(),
            client_name=f"callstream-kafka-bridge-{self._consumer}",
        )
        try:
            await self._ensure_group()
            log.info(
                "mirroring %s (group %s, consumer %s) to Kafka at %s, topics %s.*",
                self._key,
                self.group,
                self._consumer,
                self._config.describe(),
                self._config.topic_prefix,
            )
            # What this consumer left pending (a previous run died mid-batch) goes first.
            backlog = True
            attempt = 0
            last_claim = 0.0
            while not self._stopping.is_set():
                try:
                    if time.monotonic() - last_claim >= CLAIM_IDLE_S / 2:
                        last_claim = time.monotonic()
                        backlog = await self._claim_idle() > 0 or backlog
                    entries = await self._read("0" if backlog else ">")
                    if backlog and not entries:
                        backlog = False
                        continue
                    if entries:
                        await self._forward(entries)
                    attempt = 0
                    self._set_failure(None)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Kafka or Redis: the batch stays pending
                    self.metrics.failures.inc()
                    self._set_failure(f"{type(exc).__name__}: {exc}")
                    backlog = True  # send what is pending again, in order, before new entries
                    delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                    attempt += 1
                    log.warning(
                        "could not forward a batch (%s); again in %.1f s", self._failure, delay
                    )
                    try:
                        async with asyncio.timeout(delay):
                            await self._stopping.wait()
                    except TimeoutError:
                        pass
        finally:
            await self._redis.aclose()

    def _set_failure(self, failure: str | None) -> None:
        if failure is None and self._failure is not None:
            log.info("forwarding again")
        self._failure = failure

    # ---------------------------------------------------------------- Redis

    async def _ensure_group(self) -> None:
        assert self._redis is not None
        start = "0" if self._from_start else "$"
        try:
            await self._redis.xgroup_create(self._key, self.group, id=start, mkstream=True)
            log.info(
                "created consumer group %s on %s from %s",
                self.group,
                self._key,
                "its first entry" if self._from_start else "now on",
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, start: str) -> list[Entry]:
        assert self._redis is not None
        reply: Any = await self._redis.xreadgroup(
            self.group,
            self._consumer,
            {self._key: start},
            count=self._batch,
            block=None if start != ">" else BLOCK_MS,
        )
        if not reply:
            return []
        [[_, raw]] = reply
        return [(_text(entry_id), fields or {}) for entry_id, fields in raw]

    async def _claim_idle(self) -> int:
        """Take over what another consumer (a bridge that died) left pending for a while: it is
        read with the backlog, in order."""
        assert self._redis is not None
        reply: Any = await self._redis.xautoclaim(
            self._key,
            self.group,
            self._consumer,
            min_idle_time=int(CLAIM_IDLE_S * 1000),
            start_id="0-0",
            count=self._batch,
            justid=True,
        )
        claimed = reply[1] if reply else []
        if claimed:
            log.warning("took over %d entries another bridge left pending", len(claimed))
        return len(claimed)

    # ---------------------------------------------------------------- Kafka

    async def _forward(self, entries: Sequence[Entry]) -> None:
        """Send ``entries`` to Kafka, wait until Kafka acknowledged all of them, then XACK."""
        assert self._redis is not None
        self.metrics.pending.set(len(entries))
        futures = []
        families = []
        for entry_id, fields in entries:
            record = self._record(entry_id, fields)
            if record is None:
                continue
            family = record.topic.removeprefix(self._config.topic_prefix + ".")
            future = await self._topics[family].send(
                key=record.key,
                value=record.value,
                headers=list(record.headers),
                timestamp=record.timestamp_ms / 1000,
            )
            futures.append(future)
            families.append(family)
        if futures:
            async with asyncio.timeout(KAFKA_ACK_TIMEOUT_S):
                await asyncio.gather(*futures)
        acked_at_ms = time.time() * 1000
        if self._on_acked is not None:
            self._on_acked([entry_id for entry_id, _ in entries], acked_at_ms)
        await self._redis.xack(self._key, self.group, *(entry_id for entry_id, _ in entries))
        for family in families:
            self.metrics.records.labels(family).inc()
        for entry_id, _ in entries:
            added_ms = int(entry_id.split("-", 1)[0])
            self.metrics.latency.observe(max(0.0, acked_at_ms - added_ms) / 1000)
        self.sent += len(futures)
        self.metrics.pending.set(0)

    def _record(self, entry_id: str, fields: Mapping[bytes, bytes]) -> topics.Record | None:
        if not fields:  # trimmed while pending (CS_INSIGHTS_MAX_HELD): nothing left to send
            log.error("%s %s was trimmed before it reached Kafka", self._key, entry_id)
            self.metrics.rejected.inc()
            return None
        try:
            event = Event.from_fields(fields)
        except (EventError, KeyError, ValueError) as exc:
            log.warning("%s %s is not an event (%s): skipped", self._key, entry_id, exc)
            self.metrics.rejected.inc()
            return None
        if self._view is not None:
            shown = self._view(event)
            if shown is None:
                self.metrics.withheld.inc()
                return None
            event = shown
        return topics.to_record(self._config.topic_prefix, event, entry_id)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
