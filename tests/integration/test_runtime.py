"""The worker runtime: ownership, capacity, hand-back, failover; and the echo worker.

Driven without a gateway: the tests write `started` entries to cs:calls and frames to the
calls' in streams themselves. Real Redis; short heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from callstream.shared.entries import (
    CallStarted,
    InEnd,
    InFrame,
    decode_out,
    encode_call,
    encode_in,
)
from callstream.shared.events import WORKER_FAILED
from callstream.shared.settings import Settings
from callstream.workers import runtime as runtime_module
from callstream.workers.api import CallContext, CallHandler, Inputs, Item, keyed_event
from callstream.workers.echo import echo_factory
from callstream.workers.runtime import WorkerRuntime
from tests.helpers import RedisProcess, example_event, free_port, until, xrange
from tests.helpers import events as read_events

HEARTBEAT_S = 0.1


async def start_call(redis: aioredis.Redis, settings: Settings, call_id: str) -> None:
    started = CallStarted(call_id, 16000, "mixed", int(time.time() * 1000), "test")
    await redis.xadd(settings.keys.calls, encode_call(started))


async def add_frames(
    redis: aioredis.Redis,
    settings: Settings,
    call_id: str,
    first: int,
    count: int,
    *,
    silent_every: int = 0,
) -> list[str]:
    """Frames ``first`` … ``first + count - 1`` of a call; their entry ids."""
    async with redis.pipeline(transaction=False) as pipe:
        for seq in range(first, first + count):
            silent = bool(silent_every) and seq % silent_every == 0
            pcm = bytes(640) if silent else seq.to_bytes(4, "little") * 160
            frame = InFrame(seq, 0, "", 0, silent, pcm)
            pipe.xadd(settings.keys.call_in(call_id), encode_in(frame))
        return [entry_id.decode() for entry_id in await pipe.execute()]


async def end_call(redis: aioredis.Redis, settings: Settings, call_id: str) -> str:
    """The call's end marker; its entry id."""
    entry_id = await redis.xadd(settings.keys.call_in(call_id), encode_in(InEnd("normal")))
    return cast(bytes, entry_id).decode()


async def echoed_seqs(redis: aioredis.Redis, settings: Settings, call_id: str) -> list[int]:
    entries = await xrange(redis, settings.keys.call_out(call_id))
    seqs = []
    for _, fields in entries:
        out = decode_out(fields)
        assert hasattr(out, "pcm")
        seqs.append(int.from_bytes(cast(Any, out).pcm[:4], "little"))
    return seqs


async def group_info(redis: aioredis.Redis, settings: Settings, kind: str) -> dict[str, Any]:
    groups = await redis.xinfo_groups(settings.keys.calls)
    for group in groups:
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) == settings.keys.group(kind):
            return group
    raise AssertionError("group not found")


def runtime(
    settings: Settings,
    consumer: str,
    max_calls: int = 10,
    factory: Any = None,
    heartbeat_s: float = HEARTBEAT_S,
    registry: CollectorRegistry | None = None,
) -> WorkerRuntime:
    return WorkerRuntime(
        settings,
        "echo",
        factory or echo_factory(0.0),
        max_calls=max_calls,
        consumer=consumer,
        heartbeat_s=heartbeat_s,
        registry=registry,
    )


# ------------------------------------------------------------------ echo


async def test_echo_plays_back_speech_frames_in_order_and_finishes_the_call(
    redis: aioredis.Redis, settings: Settings
) -> None:
    async with runtime(settings, "a") as worker:
        await start_call(redis, settings, "c1")
        await add_frames(redis, settings, "c1", 0, 100, silent_every=3)
        await end_call(redis, settings, "c1")

        async def finished() -> bool:
            info = await group_info(redis, settings, "echo")
            return bool(info["lag"] == 0 and info["pending"] == 0)

        await until(finished)  # delivered to the worker, served, acknowledged
        async with asyncio.timeout(10):
            await worker.wait_idle()
    assert await echoed_seqs(redis, settings, "c1") == [s for s in range(100) if s % 3]
    # Done: the checkpoint says so (until its TTL), and the audio, which no kind needs any
    # more, is gone from Redis.
    assert await redis.hget(settings.keys.checkpoint("echo", "c1"), "done") == b"1"
    assert await redis.exists(settings.keys.call_in("c1")) == 0
    [done] = [e for e in await read_events(redis, settings.keys.call_events("c1"))]
    assert (done.type, done.data) == ("echo.done", {"kind": "echo", "reason": "normal"})


async def test_echo_delay_holds_frames_back(redis: aioredis.Redis, settings: Settings) -> None:
    async with runtime(settings, "a", factory=echo_factory(200.0)):
        await start_call(redis, settings, "slow")
        await add_frames(redis, settings, "slow", 0, 5)
        await end_call(redis, settings, "slow")
        await until(lambda: _len_is(redis, settings.keys.call_out("slow"), 5))
    ins = await xrange(redis, settings.keys.call_in("slow"))
    outs = await xrange(redis, settings.keys.call_out("slow"))
    for (in_id, _), (out_id, _) in zip(ins, outs, strict=False):
        assert int(out_id.split(b"-")[0]) >= int(in_id.split(b"-")[0]) + 200


async def _len_is(redis: aioredis.Redis, key: str, n: int) -> bool:
    return bool(await redis.xlen(key) == n)


async def test_two_calls_are_isolated(redis: aioredis.Redis, settings: Settings) -> None:
    async with runtime(settings, "a"):
        for call_id, first in (("x", 0), ("y", 1000)):
            await start_call(redis, settings, call_id)
            await add_frames(redis, settings, call_id, first, 20)
            await end_call(redis, settings, call_id)
        await until(lambda: _len_is(redis, settings.keys.call_out("y"), 20))
        await until(lambda: _len_is(redis, settings.keys.call_out("x"), 20))
    assert await echoed_seqs(redis, settings, "x") == list(range(20))
    assert await echoed_seqs(redis, settings, "y") == list(range(1000, 1020))


# ------------------------------------------------------------------ ownership and capacity


async def test_capacity_limits_owned_calls_and_the_rest_wait_in_the_lag(
    redis: aioredis.Redis, settings: Settings
) -> None:
    async with runtime(settings, "a", max_calls=2) as worker:
        for call_id in ("c1", "c2", "c3"):
            await start_call(redis, settings, call_id)

        async def two_owned() -> bool:
            return len(worker.owned) == 2

        await until(two_owned)
        info = await group_info(redis, settings, "echo")
        assert info["pending"] == 2  # calls being served
        assert info["lag"] == 1  # calls waiting for a replica
        first_two = set(worker.owned)
        finished = sorted(first_two)[0]
        await end_call(redis, settings, finished)

        async def third_taken() -> bool:
            return "c3" in worker.owned and finished not in worker.owned

        await until(third_taken)
        info = await group_info(redis, settings, "echo")
        assert (info["pending"], info["lag"]) == (2, 0)


async def test_two_replicas_of_two_calls_serve_four_of_five_and_the_fifth_waits(
    redis: aioredis.Redis, settings: Settings
) -> None:
    async with runtime(settings, "a", max_calls=2) as a, runtime(settings, "b", max_calls=2) as b:
        calls = [f"c{i}" for i in range(5)]
        for call_id in calls:
            await start_call(redis, settings, call_id)

        async def full() -> bool:
            return len(a.owned) == len(b.owned) == 2

        await until(full)
        info = await group_info(redis, settings, "echo")
        assert (info["pending"], info["lag"]) == (4, 1)  # four served, one waiting
        assert not a.owned & b.owned
        [waiting] = set(calls) - a.owned - b.owned
        done = sorted(b.owned)[0]
        await end_call(redis, settings, done)

        async def fifth_taken() -> bool:
            return waiting in a.owned | b.owned and done not in b.owned

        await until(fifth_taken)
        info = await group_info(redis, settings, "echo")
        assert (info["pending"], info["lag"]) == (4, 0)
        assert len(a.owned) == len(b.owned) == 2


async def test_two_replicas_share_calls_each_owned_once(
    redis: aioredis.Redis, settings: Settings
) -> None:
    async with runtime(settings, "a", max_calls=2) as a, runtime(settings, "b", max_calls=2) as b:
        for i in range(4):
            await start_call(redis, settings, f"c{i}")

        async def all_taken() -> bool:
            return len(a.owned) + len(b.owned) == 4

        await until(all_taken)
        assert a.owned.isdisjoint(b.owned)
        assert len(a.owned) == len(b.owned) == 2


# ------------------------------------------------------------------ hand-back and failover


class Recorder:
    """A handler that records every in-stream entry id it processed, across replicas."""

    seen: list[str]

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    async def handle(self, batch: Sequence[Item]) -> None:
        self.seen.extend(entry_id for entry_id, _ in batch)

    async def aclose(self) -> None:
        pass


def recorder_factory(seen: list[str]) -> Callable[[CallContext], CallHandler]:
    return lambda ctx: Recorder(seen)


async def test_graceful_close_hands_the_call_to_another_replica_without_gaps_or_repeats(
    redis: aioredis.Redis, settings: Settings
) -> None:
    seen: list[str] = []
    a = runtime(settings, "a", factory=recorder_factory(seen))
    # B would take a call over from a silent owner only after 3 s (three of its 1 s heartbeats):
    # taking it much sooner shows the hand-back, and a busy machine stalling A's heartbeats
    # for a moment does not make B take the call while A still serves it.
    b = runtime(settings, "b", max_calls=1, factory=recorder_factory(seen), heartbeat_s=1.0)
    await a.__aenter__()
    await start_call(redis, settings, "moving")
    await until(lambda: _owned_by(a, "moving"))
    async with b:
        ids = await add_frames(redis, settings, "moving", 0, 50)
        await until(lambda: _seen_at_least(seen, 50))
        await a.aclose()  # SIGTERM: hand back at once
        took = await until(lambda: _owned_by(b, "moving"))
        assert took < 2.5  # a failover would take at least 3 s
        ids += await add_frames(redis, settings, "moving", 50, 50)
        ids.append(await end_call(redis, settings, "moving"))
        await until(lambda: _not_owned(b, "moving"))
    assert seen == ids  # every entry once, in order


class CancelSwallower(Recorder):
    """Loses its task's cancellation, as ``asyncio.wait_for`` can on Python 3.11."""

    def __init__(self, seen: list[str], busy: asyncio.Event) -> None:
        super().__init__(seen)
        self.busy = busy

    async def handle(self, batch: Sequence[Item]) -> None:
        await super().handle(batch)
        self.busy.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1.0)
        self.busy.clear()


async def test_a_lost_cancellation_does_not_keep_a_stopped_replica_serving(
    redis: aioredis.Redis, settings: Settings
) -> None:
    seen: list[str] = []
    busy = asyncio.Event()
    a = runtime(settings, "a", factory=lambda ctx: CancelSwallower(seen, busy))
    await a.__aenter__()
    await start_call(redis, settings, "sticky")
    ids = await add_frames(redis, settings, "sticky", 0, 10)
    await busy.wait()  # A's handler holds the first batch: its cancellation will be lost
    await a.aclose()
    ids += await add_frames(redis, settings, "sticky", 10, 10)
    async with runtime(settings, "b", factory=recorder_factory(seen)) as b:
        await until(lambda: _owned_by(b, "sticky"))
        ids.append(await end_call(redis, settings, "sticky"))
        await until(lambda: _not_owned(b, "sticky"))
    assert seen == ids  # A stopped for good: nothing seen twice


async def _owned_by(worker: WorkerRuntime, call_id: str) -> bool:
    return call_id in worker.owned


async def _not_owned(worker: WorkerRuntime, call_id: str) -> bool:
    return call_id not in worker.owned


async def _seen_at_least(seen: list[str], n: int) -> bool:
    return len(seen) >= n


async def test_a_killed_replica_calls_are_taken_over_and_resumed(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """kill -9 a worker process mid-call: another takes the call and the echo completes."""
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix}
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "worker",
        "echo",
        "--consumer",
        "victim",
        "--heartbeat-s",
        str(HEARTBEAT_S),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await start_call(redis, settings, "orphan")
        await add_frames(redis, settings, "orphan", 0, 50)
        await until(lambda: _len_is(redis, settings.keys.call_out("orphan"), 50), timeout_s=20)
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        killed_at = time.monotonic()
        async with runtime(settings, "rescuer"):
            await add_frames(redis, settings, "orphan", 50, 50)
            await end_call(redis, settings, "orphan")

            async def finished() -> bool:
                return bool((await group_info(redis, settings, "echo"))["pending"] == 0)

            await until(finished)
            assert time.monotonic() - killed_at < 5.0  # taken over and finished within 5 s
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
    seqs = await echoed_seqs(redis, settings, "orphan")
    # At least once: everything after the checkpoint is replayed, nothing is skipped.
    assert set(seqs) == set(range(100))
    assert seqs[-50:] == list(range(50, 100))


async def test_the_cli_worker_serves_metrics_and_exits_0_on_sigterm(settings: Settings) -> None:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix}
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "worker",
        "echo",
        "--heartbeat-s",
        "0.1",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while b"serving up to" not in await proc.stderr.readline():
            pass
        metrics = await http_get(port, "/metrics")
        assert metrics.startswith("HTTP/1.0 200")
        assert 'callstream_worker_calls_owned{kind="echo"} 0.0' in metrics
        assert (await http_get(port, "/healthz")).startswith("HTTP/1.0 200")
        ready = await http_get(port, "/readyz")
        assert ready.startswith("HTTP/1.0 200"), ready
        assert ready.endswith("ready\n")
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def http_get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    response = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    return response


async def test_readyz_says_when_a_replica_cannot_serve(settings: Settings, tmp_path: Path) -> None:
    """/readyz: 503 with the reason while Redis is unavailable, 200 once it answers and the
    group exists, 503 again while draining after SIGTERM (which the runtime reports)."""
    server = RedisProcess(free_port(), tmp_path)
    local = dataclasses.replace(settings, redis_url=server.url)
    try:
        async with runtime(local, "a") as worker:
            ready, why = worker.readiness()
            assert not ready
            assert "Redis unavailable" in why
            await asyncio.to_thread(server.start)

            async def ready_now() -> bool:
                return worker.readiness() == (True, "ready")

            await until(ready_now, timeout_s=20)
            closing = asyncio.create_task(worker.aclose())
            await asyncio.sleep(0)  # aclose has begun
            assert worker.readiness() == (False, "draining: handing its calls back")
            await closing
    finally:
        server.kill()


async def test_aclose_leaves_no_task_running(redis: aioredis.Redis, settings: Settings) -> None:
    before = asyncio.all_tasks()
    async with runtime(settings, "a") as worker:
        await start_call(redis, settings, "t")
        await until(lambda: _owned_by(worker, "t"))
    assert asyncio.all_tasks() == before


async def test_a_replica_that_lost_its_claim_stops_serving_the_call(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """If another replica took the call (our heartbeat came too late), we let it go."""
    # A slower heartbeat than the other tests: the thief's claim counts as alive (not idle for
    # three heartbeats) for 1.5 s, long enough to see that we do not claim it back.
    async with WorkerRuntime(
        settings, "echo", echo_factory(0.0), consumer="a", heartbeat_s=0.5
    ) as worker:
        await start_call(redis, settings, "taken")
        await add_frames(redis, settings, "taken", 0, 5)
        await until(lambda: _owned_by(worker, "taken"))
        pending = await redis.xpending_range(
            settings.keys.calls, settings.keys.group("echo"), min="-", max="+", count=10
        )
        entry_id = pending[0]["message_id"]
        await redis.xclaim(
            settings.keys.calls, settings.keys.group("echo"), "thief", 0, [entry_id], justid=True
        )
        await until(lambda: _not_owned(worker, "taken"))
        rows = await redis.xpending_range(
            settings.keys.calls, settings.keys.group("echo"), min="-", max="+", count=10
        )
        assert [row["consumer"] for row in rows] == [b"thief"]  # not claimed back


# ------------------------------------------------------------------ giving up


class Failing(Recorder):
    """A handler that raises on every batch (a poison call)."""

    attempts = 0

    async def handle(self, batch: Sequence[Item]) -> None:
        Failing.attempts += 1
        raise RuntimeError("cannot process this call")


async def test_a_call_that_keeps_failing_is_given_up_and_the_others_go_on(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """The handler raises for one call: after CS_WORKER_MAX_ATTEMPTS attempts the call is
    acknowledged, counted and announced with a worker.failed event carrying the last error,
    instead of being retried for ever; the replica serves the other call meanwhile."""
    local = dataclasses.replace(settings, worker_max_attempts=3)
    registry = CollectorRegistry()
    Failing.attempts = 0
    good = echo_factory(0.0)

    def factory(ctx: CallContext) -> CallHandler:
        return Failing([]) if ctx.call.call_id == "poison" else good(ctx)

    def abandoned() -> float:
        value = registry.get_sample_value(
            "callstream_worker_calls_abandoned_total", {"kind": "echo"}
        )
        return value or 0.0

    async with WorkerRuntime(
        local, "echo", factory, consumer="a", heartbeat_s=HEARTBEAT_S, registry=registry
    ):
        await start_call(redis, local, "poison")
        await add_frames(redis, local, "poison", 0, 5)
        await start_call(redis, local, "fine")
        await add_frames(redis, local, "fine", 0, 20)
        await end_call(redis, local, "fine")

        async def given_up() -> bool:
            return abandoned() == 1

        await until(given_up, timeout_s=30)
        assert not await redis.xpending_range(
            local.keys.calls, local.keys.group("echo"), min="-", max="+", count=10
        )
    assert Failing.attempts == 3
    [failed] = [e for e in await read_events(redis, local.keys.call_events("poison"))]
    assert failed.type == WORKER_FAILED
    assert failed.data == {
        "kind": "echo",
        "attempts": 3,
        "error": "RuntimeError: cannot process this call",
    }
    assert failed.id in {e.id for e in await read_events(redis, local.keys.insights)}
    assert await echoed_seqs(redis, local, "fine") == list(range(20))


async def test_hand_backs_are_not_failed_attempts(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """With one attempt allowed, a call handed back twice (two rolling restarts) is still
    served: hand-backs do not count against CS_WORKER_MAX_ATTEMPTS."""
    local = dataclasses.replace(settings, worker_max_attempts=1)
    seen: list[str] = []
    await start_call(redis, local, "rolled")
    ids: list[str] = []
    for served, name in enumerate(("a", "b"), start=1):
        replica = runtime(local, name, factory=recorder_factory(seen))
        await replica.__aenter__()
        await until(functools.partial(_owned_by, replica, "rolled"))
        ids += await add_frames(redis, local, "rolled", len(seen), 10)
        await until(functools.partial(_seen_at_least, seen, 10 * served))
        await replica.aclose()  # SIGTERM: hand back
    async with runtime(local, "c", factory=recorder_factory(seen)) as c:
        await until(lambda: _owned_by(c, "rolled"))
        ids.append(await end_call(redis, local, "rolled"))
        await until(lambda: _not_owned(c, "rolled"))
    events = await read_events(redis, local.keys.call_events("rolled"))
    assert [e.type for e in events] == ["echo.done"]  # no worker.failed
    assert seen == ids


async def test_the_delay_metric_shows_how_long_entries_waited(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """callstream_worker_delay_seconds: entries published 5 s before the replica reads them
    (as when it is slower than real time) are seen as 5 s late; fresh ones as on time."""
    registry = CollectorRegistry()

    def sample(name: str, le: str | None = None) -> float:
        labels = {"kind": "echo"} | ({"le": le} if le else {})
        return registry.get_sample_value(f"callstream_worker_delay_seconds_{name}", labels) or 0

    key = settings.keys.call_in("late")
    five_s_ago = int(time.time() * 1000) - 5000
    for seq in range(3):
        frame = InFrame(seq, five_s_ago, "", 0, False, bytes(640))
        await redis.xadd(key, encode_in(frame), id=f"{five_s_ago}-{seq}")
    async with runtime(settings, "a", registry=registry):
        await start_call(redis, settings, "late")

        async def observed(count: int) -> bool:
            return sample("count") >= count

        await until(functools.partial(observed, 1))
        assert sample("count") == 1  # one batch
        assert sample("bucket", "2.5") == 0
        assert sample("bucket", "10.0") == 1
        await add_frames(redis, settings, "late", 3, 1)
        await until(functools.partial(observed, 2))
        assert sample("bucket", "1.0") == 1  # the fresh frame was not late


async def test_the_delay_metric_ignores_the_end_of_an_events_only_call(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """A kind that reads only events gets the end of a call as an item of no entry ("0-0"):
    it is no entry that waited 55 years."""
    registry = CollectorRegistry()
    seen: list[str] = []
    async with WorkerRuntime(
        settings,
        "notes",
        recorder_factory(seen),
        inputs=Inputs(audio=False, events=frozenset({"transcript"})),
        consumer="n",
        heartbeat_s=HEARTBEAT_S,
        registry=registry,
    ) as worker:
        await start_call(redis, settings, "brief")
        await until(functools.partial(_owned_by, worker, "brief"))
        ended = example_event("brief", "call.ended")
        await redis.xadd(settings.keys.call_events("brief"), dict(ended.fields()))
        await until(functools.partial(_not_owned, worker, "brief"))
    labels = {"kind": "notes"}
    count = registry.get_sample_value("callstream_worker_delay_seconds_count", labels) or 0
    within = registry.get_sample_value(
        "callstream_worker_delay_seconds_bucket", labels | {"le": "60.0"}
    )
    assert within == count


async def test_many_calls_behind_are_read_in_shares_and_lose_nothing(
    redis: aioredis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty calls with fifty frames each waiting: with a read budget of 100 entries each call
    gets a few per read (runtime.read_count), and every frame is still echoed, in order."""
    monkeypatch.setattr(runtime_module, "READ_BUDGET", 100)
    calls = [f"behind-{i}" for i in range(40)]
    for call_id in calls:
        await start_call(redis, settings, call_id)
        await add_frames(redis, settings, call_id, 0, 50)
    async with runtime(settings, "a", max_calls=50) as worker:

        async def all_owned() -> bool:
            return set(calls) <= worker.owned

        await until(all_owned)
        for call_id in calls:
            await end_call(redis, settings, call_id)

        async def all_done() -> bool:
            return not worker.owned

        await until(all_done, timeout_s=60)
    for call_id in calls:
        assert await echoed_seqs(redis, settings, call_id) == list(range(50))


# ------------------------------------------------------------------ a quiet inbound


async def test_a_call_whose_inbound_goes_quiet_is_ended_after_the_idle_timeout(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """The gateway that had the call died: no more frames, and no `end` entry will come.
    After CS_CALL_IDLE_TIMEOUT_S the owner ends the call (the handler gets an `end`), so the
    replica's capacity is not held for ever, and gives the call's streams their TTL."""
    local = dataclasses.replace(settings, call_idle_timeout_s=0.5)
    registry = CollectorRegistry()
    async with runtime(local, "a", registry=registry) as worker:
        await start_call(redis, local, "orphan")
        await add_frames(redis, local, "orphan", 0, 5)
        await until(functools.partial(_owned_by, worker, "orphan"))
        await until(functools.partial(_not_owned, worker, "orphan"))
    finished = registry.get_sample_value("callstream_worker_calls_finished_total", {"kind": "echo"})
    assert finished == 1
    assert await echoed_seqs(redis, local, "orphan") == list(range(5))
    assert (await group_info(redis, local, "echo"))["pending"] == 0
    for key in (local.keys.call_out("orphan"), local.keys.call_events("orphan")):
        assert 0 < await redis.ttl(key) <= local.call_ttl_s  # nobody else would set it
    assert await redis.exists(local.keys.call_in("orphan")) == 0  # no kind needs the audio
    [done] = await read_events(redis, local.keys.call_events("orphan"))
    assert done.data == {"kind": "echo", "reason": "inbound_idle"}


async def test_a_call_whose_first_frame_comes_late_is_served(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """`started` may come before the first frame (the mode was given in the URL): the owner
    reads the not-yet-existing stream again and again and waits for it."""
    async with runtime(settings, "a") as worker:
        await start_call(redis, settings, "late")
        await until(functools.partial(_owned_by, worker, "late"))
        await until_redis_ran(redis, "xread", 5)  # the owner read the empty stream again
        assert "late" in worker.owned
        await add_frames(redis, settings, "late", 0, 5)
        await end_call(redis, settings, "late")
        await until(functools.partial(_not_owned, worker, "late"))
    assert await echoed_seqs(redis, settings, "late") == list(range(5))


async def test_a_replica_recreates_its_group_when_redis_lost_its_data(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """cs:calls and the group vanish (a Redis restart without persistence, as clients see it):
    the replica recreates its group and serves the calls started afterwards, and goes on
    serving the call it had (its gateway goes on streaming it)."""
    async with runtime(settings, "a") as worker:
        await start_call(redis, settings, "before")
        await until(functools.partial(_owned_by, worker, "before"))
        await redis.delete(settings.keys.calls)
        await start_call(redis, settings, "after")
        await until(functools.partial(_owned_by, worker, "after"))
        for call_id in ("before", "after"):
            await add_frames(redis, settings, call_id, 0, 5)
            await end_call(redis, settings, call_id)
            await until(functools.partial(_not_owned, worker, call_id))
    for call_id in ("before", "after"):
        assert await echoed_seqs(redis, settings, call_id) == list(range(5))


async def test_a_replica_waits_for_redis_and_survives_its_restart(
    settings: Settings, tmp_path: Path
) -> None:
    """Started before its Redis (a pod scheduled first), the replica waits instead of
    crashing; when that Redis restarts and has lost everything (no persistence), the replica
    recreates its group and serves the next call."""
    server = RedisProcess(free_port(), tmp_path)
    local = dataclasses.replace(settings, redis_url=server.url)
    client = aioredis.Redis.from_url(server.url)
    try:
        async with runtime(local, "a") as worker:  # nothing listens yet: no exception
            for call_id in ("first", "after-restart"):
                await asyncio.to_thread(server.start)
                await start_call(client, local, call_id)
                await until(functools.partial(_owned_by, worker, call_id), timeout_s=20)
                await add_frames(client, local, call_id, 0, 5)
                await end_call(client, local, call_id)
                await until(functools.partial(_not_owned, worker, call_id))
                assert await echoed_seqs(client, local, call_id) == list(range(5))
                server.kill()  # with everything in it
                await client.connection_pool.disconnect()
    finally:
        server.kill()
        await client.aclose()


async def test_writes_lost_to_a_redis_failure_cost_the_call_no_attempt(
    settings: Settings, tmp_path: Path
) -> None:
    """Redis refuses every write (out of memory) just as a call's frames arrive: the replica's
    echo of them fails. With one attempt allowed the call is neither failed nor given up: once
    Redis takes writes again it restarts on the same replica from its checkpoint, and every
    frame is echoed. (Before, the call failed, was claimed again, and that second delivery
    exceeded CS_WORKER_MAX_ATTEMPTS.)"""
    server = RedisProcess(free_port(), tmp_path)
    server.start()
    local = dataclasses.replace(settings, redis_url=server.url, worker_max_attempts=1)
    client = aioredis.Redis.from_url(server.url)
    registry = CollectorRegistry()
    try:
        async with runtime(local, "a", registry=registry) as worker:
            await start_call(client, local, "squeezed")
            await until(functools.partial(_owned_by, worker, "squeezed"))
            await add_frames(client, local, "squeezed", 0, 5)
            await until(lambda: _echoed_at_least(client, local, "squeezed", 5))
            await client.set("ballast", b"\x01" * 2_000_000)
            await client.config_set("maxmemory-policy", "noeviction")
            # Frames and the refusal together: the replica reads the frames only when
            # every write is already refused.
            async with client.pipeline(transaction=True) as pipe:
                for seq in range(5, 10):
                    pcm = seq.to_bytes(4, "little") * 160
                    pipe.xadd(
                        local.keys.call_in("squeezed"),
                        encode_in(InFrame(seq, 0, "", 0, False, pcm)),
                    )
                pipe.config_set("maxmemory", "1mb")
                await pipe.execute()

            async def rewound() -> bool:
                return bool(
                    registry.get_sample_value(
                        "callstream_worker_calls_rewound_total", {"kind": "echo"}
                    )
                )

            async def refused() -> bool:
                errors = registry.get_sample_value(
                    "callstream_worker_write_errors_total", {"kind": "echo"}
                )
                return bool(errors)

            await until(refused)
            await client.config_set("maxmemory", "0")
            await until(rewound)
            await add_frames(client, local, "squeezed", 10, 5)
            await end_call(client, local, "squeezed")
            await until(functools.partial(_not_owned, worker, "squeezed"))
        events = await read_events(client, local.keys.call_events("squeezed"))
        assert [e.type for e in events] == ["echo.done"]  # no worker.failed
        echoed = await echoed_seqs(client, local, "squeezed")
        # From the checkpoint on, the replay may echo a frame twice; none is missing.
        assert sorted(set(echoed)) == list(range(15))
        assert (
            registry.get_sample_value("callstream_worker_calls_failed_total", {"kind": "echo"}) == 0
        )
    finally:
        server.kill()
        await client.aclose()


async def _echoed_at_least(
    redis: aioredis.Redis, settings: Settings, call_id: str, count: int
) -> bool:
    return len(await echoed_seqs(redis, settings, call_id)) >= count


async def test_a_live_call_is_served_before_a_backlog_of_calls_that_ended_unserved(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Twenty calls began and ended while no replica served them (3 s of audio each); then a
    live call starts. A replica with room for four calls (a backlog call at 8x real time costs
    all four) takes the live call at once, parking the backlog call it was on, and serves the
    backlog with the room the live call leaves: none while it lives. Every backlog call is
    still served completely. (Before, the replica worked through every ended call first.)"""
    local = dataclasses.replace(settings, worker_backlog_speed=8.0)
    backlog = [f"ended-{i}" for i in range(20)]
    for call_id in backlog:
        await start_call(redis, local, call_id)
        await add_frames(redis, local, call_id, 0, 150)
        await end_call(redis, local, call_id)
    await start_call(redis, local, "live")
    await add_frames(redis, local, "live", 0, 5)
    registry = CollectorRegistry()

    async def done(call_id: str) -> bool:
        return await redis.hget(local.keys.checkpoint("echo", call_id), "done") == b"1"

    async with runtime(local, "a", max_calls=4, registry=registry) as worker:
        await until(lambda: _echoed_at_least(redis, local, "live", 5))
        finished = [call_id for call_id in backlog if await done(call_id)]
        assert len(finished) <= 2, finished  # at most what it did before it read "live"
        assert "live" in worker.owned
        await end_call(redis, local, "live")

        async def all_done() -> bool:
            return all([await done(call_id) for call_id in backlog])

        await until(all_done, timeout_s=60)
    for call_id in backlog:
        assert sorted(set(await echoed_seqs(redis, local, call_id))) == list(range(150))
    assert registry.get_sample_value("callstream_worker_backlog_calls", {"kind": "echo"}) == 0


class Chatterbox:
    """A handler that answers every entry with ``chunks`` chunks of audio (a runaway agent)."""

    def __init__(self, ctx: CallContext, seen: list[str], chunks: int) -> None:
        self.ctx, self.seen, self.chunks = ctx, seen, chunks

    async def handle(self, batch: Sequence[Item]) -> None:
        for entry_id, _ in batch:
            self.seen.append(entry_id)
            for _ in range(self.chunks):
                self.ctx.audio.play(b"\x01" * 640)

    async def aclose(self) -> None:
        pass


class Announcer:
    """A handler that publishes one keyed event per frame (a result about that frame)."""

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx

    async def handle(self, batch: Sequence[Item]) -> None:
        for _, value in batch:
            if isinstance(value, InFrame):
                self.ctx.events.publish("test.heard", {"seq": value.seq}, key=str(value.seq))

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("event_types_allowed", [frozenset({"test.heard"})])
async def test_a_backlog_call_does_not_publish_again_what_its_dead_owner_published(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """A replica died after publishing a result of an ended call and before checkpointing:
    the call, over now, is backlog for the next replica, which must still look at what was
    published (as at any takeover) and not publish it again."""
    await start_call(redis, settings, "orphan")
    await add_frames(redis, settings, "orphan", 0, 3)
    await end_call(redis, settings, "orphan")
    earlier = keyed_event("orphan", "test.heard", {"seq": 0}, key="0")
    await redis.xadd(settings.keys.call_events("orphan"), dict(earlier.fields()))
    registry = CollectorRegistry()
    async with runtime(settings, "a", factory=Announcer, registry=registry):

        async def done() -> bool:
            checkpoint = settings.keys.checkpoint("echo", "orphan")
            return await redis.hget(checkpoint, "done") == b"1"

        await until(done)
    events = await read_events(redis, settings.keys.call_events("orphan"))
    heard = [e.id for e in events if e.type == "test.heard"]
    assert heard == [f"orphan:test.heard:{seq}" for seq in range(3)]
    taken = registry.get_sample_value(
        "callstream_worker_calls_taken_total", {"kind": "echo", "how": "backlog"}
    )
    assert taken == 1


async def test_a_call_whose_audio_is_not_played_fast_enough_is_not_read(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Back-pressure from playback: a handler answers each frame with 600 chunks while nobody
    plays them. Once the call's out stream holds more than half of CS_OUT_STREAM_MAXLEN
    (here 1000) the call is not read, so its handler makes no more (before, it went on and
    MAXLEN dropped the oldest audio); when egress has taken the audio it is read again."""
    local = dataclasses.replace(settings, out_stream_maxlen=1000)
    seen: list[str] = []
    registry = CollectorRegistry()

    def factory(ctx: CallContext) -> CallHandler:
        return Chatterbox(ctx, seen, 600)

    async with runtime(local, "a", factory=factory, registry=registry) as worker:
        await start_call(redis, local, "chatty")
        ids = await add_frames(redis, local, "chatty", 0, 1)
        await until(lambda: _seen_at_least(seen, 1))

        def throttles() -> float:
            value = registry.get_sample_value("callstream_worker_throttles_total", {"kind": "echo"})
            return value or 0.0

        async def throttled_since(before: float) -> bool:
            return throttles() > before

        await until(functools.partial(throttled_since, 0.0))
        ids += await add_frames(redis, local, "chatty", 1, 10)
        await until_redis_ran(redis, "xlen", 3)  # three heartbeats looked, none let it read
        assert seen == ids[:1]
        await redis.xtrim(local.keys.call_out("chatty"), maxlen=0)  # egress played it all
        await until(lambda: _seen_at_least(seen, 2))
        ids.append(await end_call(redis, local, "chatty"))
        await until(lambda: _seen_at_least(seen, len(ids)))
        assert seen == ids
        # A call that ends while throttled (its caller hung up: nobody will play its audio)
        # is read again, to its end.
        await until(functools.partial(_not_owned, worker, "chatty"))
        seen.clear()
        before = throttles()
        await start_call(redis, local, "hung-up")
        hung = await add_frames(redis, local, "hung-up", 0, 1)
        await until(lambda: _seen_at_least(seen, 1))
        await until(functools.partial(throttled_since, before))
        hung += await add_frames(redis, local, "hung-up", 1, 3)
        hung.append(await end_call(redis, local, "hung-up"))
        await until(functools.partial(_not_owned, worker, "hung-up"))
    assert seen == hung


# ------------------------------------------------------------------ long calls


async def test_a_call_whose_started_entry_left_cs_calls_is_served_to_its_end(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """A call older than CS_CALLS_RETENTION_S loses its `started` entry from cs:calls, and
    the heartbeat's XCLAIM then drops it from the pending list: that is no takeover, so the
    owner goes on serving the call."""
    async with runtime(settings, "a") as worker:
        await start_call(redis, settings, "long")
        await add_frames(redis, settings, "long", 0, 5)
        await until(functools.partial(_owned_by, worker, "long"))
        await start_call(redis, settings, "newer")  # (keeps cs:calls alive)
        [(newer_id, _)] = (await xrange(redis, settings.keys.calls))[-1:]
        await redis.xtrim(settings.keys.calls, minid=newer_id, approximate=False)
        assert await redis.xlen(settings.keys.calls) == 1  # "long"'s entry is gone
        await until_redis_ran(redis, "xclaim", 3)  # three heartbeats went by
        assert "long" in worker.owned
        await add_frames(redis, settings, "long", 5, 5)
        await end_call(redis, settings, "long")
        await until(functools.partial(_not_owned, worker, "long"))
    assert await echoed_seqs(redis, settings, "long") == list(range(10))


async def test_a_call_older_than_the_ttl_is_served_while_its_stream_exists(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Age alone does not make a call stale: one started two hours ago and still streaming
    is served; one whose streams have expired is acknowledged without being served."""
    two_hours_ago = int(time.time() * 1000) - 7_200_000
    for call_id in ("long", "expired"):
        started = CallStarted(call_id, 16000, "mixed", two_hours_ago, "test")
        await redis.xadd(settings.keys.calls, encode_call(started))
    await add_frames(redis, settings, "long", 0, 5)
    await end_call(redis, settings, "long")
    registry = CollectorRegistry()
    async with runtime(settings, "a", registry=registry) as worker:

        async def both_handled() -> bool:
            info = await group_info(redis, settings, "echo")
            return (info["lag"], info["pending"]) == (0, 0) and not worker.owned

        await until(both_handled)
    assert await echoed_seqs(redis, settings, "long") == list(range(5))
    taken = {
        how: registry.get_sample_value(
            "callstream_worker_calls_taken_total", {"kind": "echo", "how": how}
        )
        for how in ("new", "backlog")
    }
    assert taken == {"new": None, "backlog": 1}  # "long" only, over before it was taken


async def until_redis_ran(redis: aioredis.Redis, command: str, times: int) -> None:
    """Until Redis has run ``command`` ``times`` more times (from any client: the runtime's,
    as nothing else here sends it): time passing as the code under test acts, not a sleep."""

    async def calls() -> int:
        stats = await redis.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    before = await calls()

    async def ran() -> bool:
        return await calls() >= before + times

    await until(ran)
