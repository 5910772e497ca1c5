"""cs:insights keeps its newest CS_INSIGHTS_MAXLEN entries, and, for the consumer groups that
read it (the Kafka bridge), whatever a group has not acknowledged, up to CS_INSIGHTS_MAX_HELD
(callstream/bus/retention.py), against a real Redis."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis.asyncio as aioredis

from callstream.bus.retention import InsightsTrimmer, parse_trimmed
from callstream.ingress import server
from callstream.ingress.server import Gateway
from callstream.shared.settings import Settings
from tests.helpers import example_event, until, xrange

KEEP = 100
NODE = 100  # Redis's stream-node-max-entries: `~` trims whole nodes, so keeps up to one more


async def fill(redis: aioredis.Redis, key: str, n: int) -> list[bytes]:
    """``n`` events (valid ones: the test's insights are checked against the catalogue)."""
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(key, dict(example_event(f"call-{i}", "call.started").fields()))
    ids: list[bytes] = await pipe.execute()
    return ids


async def ids(redis: aioredis.Redis, key: str) -> list[bytes]:
    return [entry_id for entry_id, _ in await xrange(redis, key)]


async def read(redis: aioredis.Redis, key: str, group: str, count: int) -> list[bytes]:
    reply: Any = await redis.xreadgroup(group, "c", {key: ">"}, count=count)
    [[_, entries]] = reply
    return [entry_id for entry_id, _ in entries]


@pytest.fixture
def key(settings: Settings) -> str:
    return settings.keys.insights


async def test_without_a_group_the_newest_maxlen_entries_are_kept(
    redis: aioredis.Redis, key: str
) -> None:
    added = await fill(redis, key, 1000)
    trimmed = await InsightsTrimmer(redis, key, KEEP, 10_000).trim()
    kept = await ids(redis, key)
    assert KEEP <= len(kept) <= KEEP + NODE
    assert kept == added[-len(kept) :]
    assert trimmed.entries == 1000 - len(kept)
    assert trimmed.unacknowledged == 0
    assert trimmed.behind == {}


async def test_a_group_behind_keeps_everything_it_has_not_acknowledged(
    redis: aioredis.Redis, key: str
) -> None:
    added = await fill(redis, key, 1000)
    await redis.xgroup_create(key, "bridge", id="0")
    delivered = await read(redis, key, "bridge", 300)
    await redis.xack(key, "bridge", *delivered[:200])  # 100 pending, 700 not delivered
    trimmed = await InsightsTrimmer(redis, key, KEEP, 10_000).trim()
    kept = await ids(redis, key)
    assert kept == added[-len(kept) :]
    assert len(kept) >= 800  # from its oldest pending entry on
    assert len(kept) < 1000  # acknowledged entries before it went (whole nodes)
    assert trimmed.behind == {"bridge": 800}
    assert trimmed.unacknowledged == 0

    # Caught up: back to the newest KEEP.
    await redis.xack(key, "bridge", *delivered[200:])
    await redis.xack(key, "bridge", *await read(redis, key, "bridge", 1000))
    trimmed = await InsightsTrimmer(redis, key, KEEP, 10_000).trim()
    assert KEEP <= len(await ids(redis, key)) <= KEEP + NODE
    assert trimmed.behind == {}


async def test_the_slowest_of_several_groups_decides(redis: aioredis.Redis, key: str) -> None:
    added = await fill(redis, key, 1000)
    await redis.xgroup_create(key, "fast", id="0")
    await redis.xgroup_create(key, "slow", id="0")
    await redis.xack(key, "fast", *await read(redis, key, "fast", 1000))
    await redis.xack(key, "slow", *await read(redis, key, "slow", 400))
    await InsightsTrimmer(redis, key, KEEP, 10_000).trim()
    kept = await ids(redis, key)
    assert added[400] in kept  # the slow group's next entry
    assert len(kept) < 1000


async def test_past_max_held_a_group_is_trimmed_past_and_that_is_reported(
    redis: aioredis.Redis, key: str
) -> None:
    added = await fill(redis, key, 1000)
    await redis.xgroup_create(key, "stopped", id="0")  # reads nothing
    trimmed = await InsightsTrimmer(redis, key, KEEP, 300).trim()
    kept = await ids(redis, key)
    assert 300 <= len(kept) <= 300 + NODE
    assert kept == added[-len(kept) :]
    assert trimmed.unacknowledged == 1000 - len(kept)
    assert trimmed.behind == {"stopped": 1000}


async def test_a_short_stream_is_left_alone(redis: aioredis.Redis, key: str) -> None:
    await fill(redis, key, KEEP)
    await redis.xgroup_create(key, "bridge", id="0")
    trimmed = await InsightsTrimmer(redis, key, KEEP, 10_000).trim()
    assert len(await ids(redis, key)) == KEEP
    assert trimmed.entries == 0
    assert trimmed.behind == {}  # not reported while nothing needs trimming


async def test_a_missing_stream_is_no_error(redis: aioredis.Redis, key: str) -> None:
    trimmed = await InsightsTrimmer(redis, key, KEEP, 10_000).trim()
    assert trimmed.entries == 0


async def test_the_gateway_trims_insights_around_their_groups(
    settings: Settings, redis: aioredis.Redis, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "INSIGHTS_TRIM_PERIOD_S", 0.0)  # at every health check
    settings = dataclasses.replace(settings, insights_maxlen=KEEP)
    added = await fill(redis, key, 1000)
    await redis.xgroup_create(key, "bridge", id="0")
    await redis.xack(key, "bridge", *await read(redis, key, "bridge", 500))

    async def trimmed() -> bool:
        return int(await redis.xlen(key)) < 1000

    async with Gateway(settings):
        await until(trimmed, 30)
    kept = await ids(redis, key)
    assert added[500] in kept  # the group's next entry
    assert kept == added[-len(kept) :]


def test_the_reply_parses() -> None:
    assert parse_trimmed([5, 2, b"bridge", 800, b"other", 120]) == (
        parse_trimmed([5, 2, "bridge", 800, "other", 120])
    )
    parsed = parse_trimmed([5, 2, b"bridge", 800])
    assert (parsed.entries, parsed.unacknowledged, parsed.behind) == (5, 2, {"bridge": 800})
