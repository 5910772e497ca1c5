"""Fixtures shared by all tests.

Integration tests use the real Redis at ``REDIS_URL`` (default 127.0.0.1:6379). Each test gets
its own key prefix, so tests never see each other's keys, and its keys are deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from callstream.shared.settings import DEFAULT_REDIS_URL, Settings
from tests.helpers import RedisProcess, free_port


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


@pytest.fixture
async def settings(redis_url: str) -> AsyncIterator[Settings]:
    """Settings with a unique key prefix; every key under it is deleted after the test."""
    prefix = f"cstest-{uuid.uuid4().hex[:10]}"
    yield Settings(redis_url=redis_url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


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
