"""The gateway's publisher against a real Redis: volume, order, per-call failures, reconnects."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from callstream.bus.publisher import MAX_BATCH, PUBLISHER_CLIENT_NAME, Publisher
from callstream.ingress.metrics import IngressMetrics
from callstream.shared.entries import InFrame, decode_in
from callstream.shared.resp import FrameXadd
from callstream.shared.settings import Settings
from tests.helpers import RedisProcess, xrange

PCM = bytes(range(256)) * 2 + bytes(128)  # 640 bytes, not all zero


class Failures:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.bus_wide: list[bool] = []  # per failure: not about the call (a worker retries it)

    def __call__(self, call_id: str, error: str, bus_wide: bool) -> None:
        self.calls.append((call_id, error))
        self.bus_wide.append(bus_wide)


def frame_command(settings: Settings, call_id: str, seq: int) -> bytes:
    return FrameXadd(settings.keys.call_in(call_id), 100_000).pack_frame(
        InFrame(seq, 1_700_000_000_000 + 20 * seq, "", 0, False, PCM)
    )


async def seqs(redis: aioredis.Redis, settings: Settings, call_id: str) -> list[int]:
    entries = await xrange(redis, settings.keys.call_in(call_id))
    frames = [decode_in(fields) for _, fields in entries]
    assert all(isinstance(f, InFrame) and f.pcm == PCM for f in frames)
    return [f.seq for f in frames if isinstance(f, InFrame)]


async def test_a_burst_of_many_batches_is_stored_completely_and_in_order(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Five calls hand over 4 000 frames each in one turn of the loop (13 MB): written in
    batches and chunks as the socket takes them, every frame lands once, in order."""
    registry = CollectorRegistry()
    metrics = IngressMetrics(registry)
    failures = Failures()
    calls = [f"burst-{i}" for i in range(5)]
    count = 4000
    async with Publisher(settings.redis_url, metrics, failures) as publisher:
        for seq in range(count):
            for call_id in calls:
                publisher.publish(call_id, frame_command(settings, call_id, seq), 1.0)
        await publisher.drain()
    assert failures.calls == []
    for call_id in calls:
        assert await seqs(redis, settings, call_id) == list(range(count))
    assert registry.get_sample_value("callstream_ingress_frames_total") == count * len(calls)
    batches = registry.get_sample_value("callstream_ingress_batch_entries_count")
    assert batches is not None
    assert batches >= count * len(calls) / MAX_BATCH  # the burst spanned many batches


async def test_an_error_reply_fails_only_its_own_call(
    redis: aioredis.Redis, settings: Settings
) -> None:
    await redis.set(settings.keys.call_in("wrongtype"), "not a stream")
    registry = CollectorRegistry()
    metrics = IngressMetrics(registry)
    failures = Failures()
    bus: list[str] = []
    async with Publisher(
        settings.redis_url, metrics, failures, on_bus_failure=bus.append
    ) as publisher:
        for seq in range(10):
            publisher.publish("fine", frame_command(settings, "fine", seq), 1.0)
            publisher.publish("wrongtype", frame_command(settings, "wrongtype", seq), 1.0)
        await publisher.drain()
    assert [call_id for call_id, _ in failures.calls] == ["wrongtype"]
    assert "WRONGTYPE" in failures.calls[0][1]
    assert failures.bus_wide == [False]
    assert bus == []  # about one call's key, not about Redis
    assert await seqs(redis, settings, "fine") == list(range(10))
    assert registry.get_sample_value("callstream_ingress_publish_errors_total") == 10


async def test_a_killed_connection_is_replaced_and_nothing_is_lost(
    redis: aioredis.Redis, settings: Settings
) -> None:
    metrics = IngressMetrics(CollectorRegistry())
    failures = Failures()
    # Its own name: other gateways (another test run sharing this Redis) name theirs the same.
    name = f"{PUBLISHER_CLIENT_NAME}-{settings.prefix}"
    async with Publisher(settings.redis_url, metrics, failures, client_name=name) as publisher:
        for seq in range(100):
            publisher.publish("kept", frame_command(settings, "kept", seq), 1.0)
        await publisher.drain()
        [publisher_client] = [c for c in await redis.client_list() if c["name"] == name]
        await redis.client_kill_filter(_id=publisher_client["id"])
        for seq in range(100, 200):
            publisher.publish("kept", frame_command(settings, "kept", seq), 1.0)
        await publisher.drain()
        # Now with a batch in flight: Redis holds the writes (CLIENT PAUSE) when the
        # connection is killed, so the batch's commands are lost with it and must be resent.
        await redis.client_pause(2000, all=False)
        try:
            for seq in range(200, 300):
                publisher.publish("kept", frame_command(settings, "kept", seq), 1.0)
            while True:  # until Redis holds the batch (postponed client)
                [client] = [c for c in await redis.client_list() if c["name"] == name]
                if "b" in client["flags"] or "P" in client["flags"]:
                    break
                await asyncio.sleep(0.01)
            await redis.client_kill_filter(_id=client["id"])
        finally:
            await redis.client_unpause()
        await publisher.drain()
    assert failures.calls == []
    stored = await seqs(redis, settings, "kept")
    assert stored == list(range(300))


async def test_entries_for_an_unreachable_redis_fail_their_calls_quickly(
    settings: Settings,
) -> None:
    failures = Failures()
    bus: list[str] = []
    metrics = IngressMetrics(CollectorRegistry())
    async with asyncio.timeout(10):
        async with Publisher(
            "redis://127.0.0.1:1/0", metrics, failures, on_bus_failure=bus.append
        ) as publisher:
            publisher.publish("lost", b"*1\r\n$4\r\nPING\r\n")
            await publisher.drain()
    assert len(failures.calls) == 1
    call_id, error = failures.calls[0]
    assert call_id == "lost"
    assert error.startswith("cannot connect to Redis")
    assert failures.bus_wide == [True]
    assert bus == [error]


async def test_a_redis_out_of_memory_fails_every_call_and_says_it_refuses_writes(
    settings: Settings, private_redis: RedisProcess
) -> None:
    """Under ``maxmemory`` with ``noeviction`` every XADD is refused: each call learns it, and
    the publisher reports once, for the batch, that Redis refuses writes."""
    raw = aioredis.Redis.from_url(private_redis.url)
    try:
        await raw.set("ballast", b"\x01" * 2_000_000)
        await raw.config_set("maxmemory-policy", "noeviction")
        await raw.config_set("maxmemory", "1mb")
        registry = CollectorRegistry()
        failures = Failures()
        bus: list[str] = []
        async with Publisher(
            private_redis.url, IngressMetrics(registry), failures, on_bus_failure=bus.append
        ) as publisher:
            for seq in range(5):
                for call_id in ("one", "two"):
                    publisher.publish(call_id, frame_command(settings, call_id, seq), 1.0)
            await publisher.drain()
        assert sorted(call_id for call_id, _ in failures.calls) == ["one", "two"]
        assert all(error.startswith("OOM command not allowed") for _, error in failures.calls)
        assert failures.bus_wide == [True, True]
        assert len(bus) == 1
        assert bus[0].startswith("writes refused: OOM command not allowed")
        assert registry.get_sample_value("callstream_ingress_publish_errors_total") == 10
        assert await raw.exists(settings.keys.call_in("one")) == 0
    finally:
        await raw.aclose()
