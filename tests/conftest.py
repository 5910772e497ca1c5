"""Fixtures shared by all tests.

Integration tests use the real Redis at ``REDIS_URL`` (default 127.0.0.1:6379). Each test gets
its own key prefix, so tests never see each other's keys, and its keys are deleted afterwards —
after every event the test produced has been validated against its schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis

from callstream.shared.catalogue import InvalidEvent, validate
from callstream.shared.entries import StreamEntries
from callstream.shared.settings import DEFAULT_REDIS_URL, Settings
from tests.helpers import KafkaBroker, RedisProcess, answers_tcp, free_port


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


@pytest.fixture
def event_types_allowed() -> frozenset[str]:
    """Event types outside the catalogue a test may produce (a worker kind of its own)."""
    return frozenset()


@pytest.fixture
async def settings(redis_url: str, event_types_allowed: frozenset[str]) -> AsyncIterator[Settings]:
    """Settings with a unique key prefix; every key under it is deleted after the test, and
    every event the test left in Redis is first validated against the event catalogue."""
    prefix = f"cstest-{uuid.uuid4().hex[:10]}"
    yield Settings(redis_url=redis_url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        try:
            await _validate_events(client, prefix, keys, event_types_allowed)
        finally:
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


async def _validate_events(
    client: aioredis.Redis, prefix: str, keys: list[bytes], allowed: frozenset[str]
) -> None:
    """Every event on the test's event streams matches its schema (shared/catalogue.py)."""
    streams = [
        key
        for key in keys
        if key == f"{prefix}:insights".encode()
        or (key.startswith(f"{prefix}:call:".encode()) and key.endswith(b":events"))
    ]
    problems: list[str] = []
    for key in streams:
        for entry_id, fields in cast(StreamEntries, await client.xrange(key)):
            try:
                validate(fields[b"event"], allow=allowed)
            except (InvalidEvent, KeyError) as exc:
                problems.append(f"{key.decode()} {entry_id.decode()}: {exc}")
    assert not problems, "events that do not match the catalogue:\n" + "\n".join(problems[:20])


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A raw-bytes client of the test Redis."""
    client = aioredis.Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(free_port(), tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A Kafka-protocol broker: the one at KAFKA_BOOTSTRAP when it answers (a real Kafka works
    the same way), else tansu started here for the session. Tests keep to topics of their own
    (a unique prefix each)."""
    address = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    if answers_tcp(address):
        yield address
        return
    broker = KafkaBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
