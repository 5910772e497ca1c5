"""What the gateway publishes over a call's life, and where the call id comes from."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from callstream.ingress.server import Gateway
from callstream.shared.entries import CallEnded, CallStarted, InFrame, decode_call, decode_in
from callstream.shared.protocols.acs import build_audio_data
from callstream.shared.settings import Settings
from callstream.simulate import metadata_message, simulate
from tests.helpers import events, wait_for_end, wait_for_entry, wait_for_event, xrange


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with Gateway(settings) as gw:
        yield gw


async def test_a_call_is_started_streamed_ended_and_expires(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    [result] = await simulate(
        gateway.url, [b"\x20\x00" * 3200], rate_hz=16000, call_ids=["life"], linger_s=0.2
    )
    assert result.completed
    entries = await wait_for_end(redis, settings.keys.call_in("life"))
    frames = [decode_in(f) for _, f in entries[:-1]]
    assert all(isinstance(f, InFrame) for f in frames)
    assert [cast(InFrame, f).seq for f in frames] == list(range(10))
    stamps = [cast(InFrame, f).ts_ms for f in frames]
    assert [b - a for a, b in itertools.pairwise(stamps)] == [20] * 9
    await wait_for_entry(redis, settings.keys.calls, lambda f: f[b"type"] == b"ended", 5)
    calls = [decode_call(f) for _, f in await xrange(redis, settings.keys.calls)]
    started, ended = calls
    assert isinstance(started, CallStarted)
    assert (started.call_id, started.rate_hz, started.mode) == ("life", 16000, "mixed")
    assert isinstance(ended, CallEnded)
    assert (ended.call_id, ended.reason) == ("life", "normal")
    types = [e.type for e in await events(redis, settings.keys.call_events("life"))]
    assert types == ["call.started", "call.ended"]
    for key in settings.keys.call_keys("life")[::2]:  # in and events exist, with a TTL
        assert 0 < await redis.ttl(key) <= settings.call_ttl_s


async def test_the_urls_tenant_and_queue_label_the_call(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    [result] = await simulate(
        f"{gateway.url}/labelled?mode=mixed&tenant=contoso&queue=billing.de",
        [b"\x20\x00" * 3200],
        rate_hz=16000,
        linger_s=0.2,
    )
    assert result.completed
    await wait_for_event(redis, settings.keys.call_events("labelled"), "call.ended", 10)
    [started, _] = await events(redis, settings.keys.call_events("labelled"))
    assert started.data == {
        "rate_hz": 16000,
        "mode": "mixed",
        "tenant": "contoso",
        "queue": "billing.de",
    }


async def test_cs_calls_keeps_entries_by_age_not_by_count(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """cs:calls drops entries older than CS_CALLS_RETENTION_S when a call is added, however
    few there are; younger ones stay however many (a count cap would drop the `started`
    entry of a long call still running, through which workers own it)."""
    local = dataclasses.replace(settings, calls_retention_s=60)
    old_ms = int(time.time() * 1000) - 120_000
    await redis.xadd(local.keys.calls, {"type": "ended", "call_id": "old"}, id=f"{old_ms}-0")
    recent_ms = int(time.time() * 1000) - 30_000
    await redis.xadd(local.keys.calls, {"type": "ended", "call_id": "recent"}, id=f"{recent_ms}-0")
    async with Gateway(local) as gateway:
        [result] = await simulate(gateway.url, [b"\x20\x00" * 3200], call_ids=["new"], linger_s=0.2)
        assert result.completed
        await wait_for_entry(
            redis, local.keys.calls, lambda f: (f[b"call_id"], f[b"type"]) == (b"new", b"ended"), 5
        )
    ids = [fields[b"call_id"] for _, fields in await xrange(redis, local.keys.calls)]
    assert ids == [b"recent", b"new", b"new"]


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/ws/from-path", {}, "from-path"),
        ("/ws", {"x-ms-call-connection-id": "from-header"}, "from-header"),
        ("/ws?callId=from-query", {}, "from-query"),
    ],
)
async def test_the_call_id_comes_from_path_header_or_query(
    gateway: Gateway,
    redis: aioredis.Redis,
    settings: Settings,
    path: str,
    headers: dict[str, str],
    expected: str,
) -> None:
    base = gateway.url.removesuffix("/ws")
    async with connect(base + path, additional_headers=headers) as conn:
        await conn.send(metadata_message(16000))
        await conn.send(json.dumps({"kind": "DtmfData", "dtmfData": {"data": "1"}}))
    await wait_for_end(redis, settings.keys.call_in(expected))


async def test_without_any_id_one_is_generated(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    base = gateway.url.removesuffix("/ws")
    async with connect(base + "/ws?mode=unmixed") as conn:
        await conn.send(metadata_message(24000))
        await conn.send(build_audio_data(bytes(960)))  # a call starts with its first frame
    fields = await wait_for_entry(redis, settings.keys.calls, lambda f: f[b"type"] == b"started", 5)
    started = decode_call(fields)
    assert isinstance(started, CallStarted)
    assert len(started.call_id) == 36  # a UUID
    assert (started.mode, started.rate_hz) == ("unmixed", 24000)


async def test_closing_the_gateway_ends_its_calls_and_leaves_nothing_running(
    settings: Settings, redis: aioredis.Redis
) -> None:
    tasks_before = asyncio.all_tasks()
    async with Gateway(settings) as gateway:
        conn = await connect(gateway.url + "/open-call?mode=mixed")
        await conn.send(metadata_message(16000))
        await conn.send(build_audio_data(bytes(640)))
        await wait_for_entry(redis, settings.keys.calls, lambda f: f[b"type"] == b"started", 5)
    # The gateway closed the call with 1001 and published its end before stopping.
    with pytest.raises(ConnectionClosed):
        await conn.recv()
    assert conn.close_code == 1001
    entries = await xrange(redis, settings.keys.call_in("open-call"))
    assert entries[-1][1][b"kind"] == b"end"
    assert asyncio.all_tasks() == tasks_before  # the publisher's tasks too
