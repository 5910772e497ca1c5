"""Runtime v2 with real Redis: shared reads, event inputs, per-call state, bounded audio."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from callstream.shared.entries import StreamEntries
from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.workers.api import CallContext, CallHandler, InEnd, Inputs, Item
from callstream.workers.echo import echo_factory
from callstream.workers.runtime import WorkerRuntime
from tests.helpers import events as read_events
from tests.helpers import example_event, until, wait_for_event
from tests.integration.test_runtime import (
    add_frames,
    echoed_seqs,
    end_call,
    start_call,
)


async def commands(redis: aioredis.Redis, name: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_one_replica_serves_200_calls_with_shared_reads_and_a_few_connections(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """200 calls start together: one replica takes them all, reads them with shared XREADs
    (far fewer than one per call) on a handful of connections (redis-py's default pool stops at
    100: the first runtime, a connection per call, failed calls past ~50), fails none and
    echoes every frame."""
    calls = [f"shared{i}" for i in range(200)]
    registry = CollectorRegistry()
    async with WorkerRuntime(
        settings, "echo", echo_factory(), max_calls=250, consumer="one", registry=registry
    ) as worker:
        reads_before = await commands(redis, "xread")
        for call_id in calls:
            await start_call(redis, settings, call_id)

        async def all_owned() -> bool:
            return len(worker.owned) == len(calls)

        await until(all_owned, timeout_s=30)
        for call_id in calls:
            await add_frames(redis, settings, call_id, 0, 10)
            await end_call(redis, settings, call_id)

        async def all_done() -> bool:
            return not worker.owned

        await until(all_done, timeout_s=60)
        clients = [
            c
            for c in await redis.client_list()
            if c["name"] == f"callstream-worker-echo-{worker.consumer}"
        ]
        reads = await commands(redis, "xread") - reads_before
    assert len(clients) <= 8  # not one per call: reader, writer, claim loop, a few pipelines
    assert reads < len(calls)  # shared reads: one read serves many calls
    taken = registry.get_sample_value(
        "callstream_worker_calls_taken_total", {"kind": "echo", "how": "new"}
    )
    assert taken == len(calls)
    assert registry.get_sample_value("callstream_worker_calls_failed_total", {"kind": "echo"}) == 0
    for call_id in calls:
        assert await echoed_seqs(redis, settings, call_id) == list(range(10))


class Collector:
    """An events-only handler: records what it is given."""

    def __init__(self, ctx: CallContext, got: dict[str, list[Item]]) -> None:
        self.items = got.setdefault(ctx.call_id, [])

    async def handle(self, batch: Sequence[Item]) -> None:
        self.items.extend(batch)

    async def aclose(self) -> None:
        pass


async def publish(redis: aioredis.Redis, settings: Settings, event: Event) -> None:
    await redis.xadd(settings.keys.call_events(event.call_id), event.fields())


async def test_a_kind_that_reads_events_gets_those_it_asked_for_until_the_awaited_done(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """An NLP-like kind reads final transcripts and waits for transcribe.done, which comes
    after call.ended: it gets every transcript (also one published after call.ended), no
    other event, then InEnd, and publishes its own done."""
    got: dict[str, list[Item]] = {}
    inputs = Inputs(
        audio=False, events=frozenset({"transcript"}), until=frozenset({"transcribe.done"})
    )
    async with WorkerRuntime(
        settings,
        "notes",
        lambda ctx: Collector(ctx, got),
        inputs=inputs,
        consumer="n",
        heartbeat_s=0.1,
    ) as worker:
        await start_call(redis, settings, "talk")
        await until(lambda: _owned(worker, "talk"))
        for event in (
            example_event("talk", "call.started"),
            example_event("talk", "transcript", text="hello"),
            example_event("talk", "speech.stopped"),
            example_event("talk", "call.ended", reason="normal"),
            example_event("talk", "transcript", key="1:9000", text="late final"),
            example_event("talk", "transcribe.done", reason="normal"),
        ):
            await publish(redis, settings, event)
        await wait_for_event(redis, settings.keys.call_events("talk"), "notes.done", 10)
        await until(lambda: _not_owned(worker, "talk"))
    texts = [item.data["text"] for _, item in got["talk"] if isinstance(item, Event)]
    assert texts == ["hello", "late final"]
    assert isinstance(got["talk"][-1][1], InEnd)
    assert await redis.exists(settings.keys.call_in("talk")) == 0  # it never read audio


class Counter:
    """Counts the frames of its call in the per-call state."""

    def __init__(self, ctx: CallContext, seen: list[tuple[str, int]]) -> None:
        self.ctx = ctx
        self.seen = seen
        seen.append(("start", int(ctx.state.get("frames", 0))))

    async def handle(self, batch: Sequence[Item]) -> None:
        self.ctx.state["frames"] = int(self.ctx.state.get("frames", 0)) + sum(
            not isinstance(item, InEnd) for _, item in batch
        )

    async def aclose(self) -> None:
        self.seen.append(("close", int(self.ctx.state.get("frames", 0))))


async def test_per_call_state_moves_with_the_call_to_the_next_owner(
    redis: aioredis.Redis, settings: Settings
) -> None:
    seen: list[tuple[str, int]] = []

    def replica(name: str) -> WorkerRuntime:
        return WorkerRuntime(
            settings, "count", lambda ctx: Counter(ctx, seen), consumer=name, heartbeat_s=0.1
        )

    await start_call(redis, settings, "counted")
    a = replica("a")
    await a.__aenter__()
    await until(lambda: _owned(a, "counted"))
    await add_frames(redis, settings, "counted", 0, 30)

    async def counted_30() -> bool:
        state = await redis.hget(settings.keys.checkpoint("count", "counted"), "state")
        return state == b'{"frames":30}'

    await until(counted_30)
    await a.aclose()  # hands the call back with its state
    async with replica("b") as b:
        await until(lambda: _owned(b, "counted"))
        await add_frames(redis, settings, "counted", 30, 12)
        await end_call(redis, settings, "counted")
        await until(lambda: _not_owned(b, "counted"))
    assert seen == [("start", 0), ("close", 30), ("start", 30), ("close", 42)]


class Holding:
    """Handles a batch only when the test lets it: a slow kind."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def handle(self, batch: Sequence[Item]) -> None:
        await self.gate.wait()

    async def aclose(self) -> None:
        pass


async def test_audio_stays_until_every_audio_kind_has_read_it_then_goes(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Echo keeps up, a second audio kind is held back: the inbound stream is not trimmed past
    the slow kind's checkpoint (and a kind that reads no audio does not hold it); once the
    slow kind has read everything the audio is trimmed, and when both are done it is gone."""
    local = dataclasses.replace(settings, audio_replay_margin_s=0.0)
    gate = asyncio.Event()
    key = local.keys.call_in("kept")

    def factory(ctx: CallContext) -> CallHandler:
        return Holding(gate)

    async with (
        WorkerRuntime(local, "echo", echo_factory(), consumer="e", heartbeat_s=0.1) as echo,
        WorkerRuntime(local, "slow", factory, consumer="s", heartbeat_s=0.1) as slow,
        WorkerRuntime(
            local,
            "notes",
            lambda ctx: Holding(asyncio.Event()),
            inputs=Inputs(audio=False, events=frozenset({"transcript"})),
            consumer="n",
            heartbeat_s=0.1,
        ),
    ):
        await start_call(redis, local, "kept")

        async def both_own() -> bool:
            return "kept" in echo.owned and "kept" in slow.owned

        await until(both_own)
        ids = await add_frames(redis, local, "kept", 0, 100)
        await until(functools.partial(_echoed, redis, local, "kept", 100))
        await until_ran(redis, "xclaim", 6)  # heartbeats went by: echo would have trimmed
        assert await head_id(redis, key) == ids[0]  # slow has checkpointed nothing: all kept
        gate.set()

        async def trimmed() -> bool:
            # All read: trimmed to the last one (approximately: Redis trims whole nodes of a
            # few entries each, so the node holding the last entry stays).
            return await head_id(redis, key) in ids[-10:]

        await until(trimmed)
        await end_call(redis, local, "kept")

        async def both_done() -> bool:
            return "kept" not in echo.owned and "kept" not in slow.owned

        await until(both_done)

        async def gone() -> bool:
            return await redis.exists(key) == 0

        await until(gone)
    done = {e.type for e in await read_events(redis, local.keys.call_events("kept"))}
    assert {"echo.done", "slow.done"} <= done


async def head_id(redis: aioredis.Redis, key: str) -> str | None:
    head = cast(StreamEntries, await redis.xrange(key, count=1))
    return head[0][0].decode() if head else None


async def until_ran(redis: aioredis.Redis, command: str, times: int) -> None:
    before = await commands(redis, command)

    async def ran() -> bool:
        return await commands(redis, command) >= before + times

    await until(ran)


async def _echoed(redis: aioredis.Redis, settings: Settings, call_id: str, n: int) -> bool:
    return len(await echoed_seqs(redis, settings, call_id)) >= n


async def _owned(worker: WorkerRuntime, call_id: str) -> bool:
    return call_id in worker.owned


async def _not_owned(worker: WorkerRuntime, call_id: str) -> bool:
    return call_id not in worker.owned
