"""The worker runtime every kind shares: call ownership, checkpoints, failover, hand-back.

* Each kind has a consumer group on ``cs:calls``. A replica with free capacity reads ``started``
  entries with ``XREADGROUP >`` and so owns those calls; it acknowledges the entry only when the
  call is done. The group's pending count is the calls being served, its lag the calls waiting.
* The owner reads a call's inbound stream in order from its checkpoint, hands batches to the
  kind's handler, and stores the last processed entry id in ``cs:ckpt:{kind}:{call}``.
* Every heartbeat the owner re-claims its entries (``XCLAIM … JUSTID``), which keeps their idle
  time low, and saves checkpoints. A replica with capacity ``XAUTOCLAIM``s entries idle for more
  than three heartbeats: the calls of a replica that died, resumed at their checkpoint.
* :meth:`WorkerRuntime.aclose` (SIGTERM) stops taking calls, saves checkpoints and marks its
  entries as long idle (``XCLAIM … IDLE``), so another replica takes them at its next claim.
* A call whose processing failed (the handler raised, or its owner died) is retried by the next
  replica to claim it, up to ``CS_WORKER_MAX_ATTEMPTS`` attempts: the entry's delivery count
  minus the hand-backs, which are not failures. Then it is given up: acknowledged, counted, and
  announced with a ``worker.failed`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import cast

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError, ResponseError
from redis.typing import StreamIdT

from callstream.shared.entries import (
    CallEnded,
    CallStarted,
    EntryError,
    InEnd,
    InEntry,
    StreamEntries,
    XReadReply,
    decode_call,
    decode_in,
    parse_id,
    previous_id,
)
from callstream.shared.events import WORKER_FAILED, Event
from callstream.shared.settings import Settings
from callstream.workers.base import CallContext, CallHandler, HandlerFactory, ResumePoint

log = logging.getLogger(__name__)

READ_COUNT = 100  # inbound entries per read
MIN_TAKEOVER_IDLE_S = 1.0
READ_TIMEOUT_MARGIN_S = 5.0  # a blocking read not answered this long after its BLOCK fails
POOL_SPARE_CONNECTIONS = 8  # beyond two per call: claim loop, heartbeat, hand-back
IDLE_END_REASON = "inbound_idle"  # the `end` a handler gets when its call's inbound went quiet
HANDBACK_IDLE_MS = 10**9  # "idle for 11 days": any replica's XAUTOCLAIM takes it at once


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry, kind: str) -> None:
        self.owned = Gauge(
            "callstream_worker_calls_owned", "Calls owned", ["kind"], registry=registry
        ).labels(kind)
        self.taken = Counter(
            "callstream_worker_calls_taken_total", "Calls taken", ["kind", "how"], registry=registry
        )
        self.finished = Counter(
            "callstream_worker_calls_finished_total",
            "Calls processed to end",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.failed = Counter(
            "callstream_worker_calls_failed_total",
            "Calls whose processing failed",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.entries = Counter(
            "callstream_worker_entries_total",
            "Inbound entries processed",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.abandoned = Counter(
            "callstream_worker_calls_abandoned_total",
            "Calls given up after CS_WORKER_MAX_ATTEMPTS failed attempts",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.lost = Counter(
            "callstream_worker_calls_lost_total",
            "Calls another replica took over from this one",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.delay = Histogram(
            "callstream_worker_delay_seconds",
            "Inbound entry published (its stream id's time) -> handed to the handler, per batch "
            "(its oldest entry): grows without bound when a replica is slower than real time",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        ).labels(kind)
        self.redis_errors = Counter(
            "callstream_worker_redis_errors_total", "Redis errors", ["kind"], registry=registry
        ).labels(kind)
        self.kind = kind


@dataclass
class _Owned:
    entry_id: str  # the call's `started` entry in cs:calls
    call: CallStarted
    last_id: str  # last processed inbound entry id
    task: asyncio.Task[None] | None = None
    finishing: bool = False  # processed to its end: being acknowledged
    trimmed: bool = False  # its `started` entry left cs:calls (trimmed, or Redis lost it)
    handler: object = None  # the call's CallHandler, once made

    @property
    def checkpoint(self) -> str:
        """What the next owner reads after: the last processed entry, or earlier when the
        handler still needs entries again (:class:`~workers.base.ResumePoint`)."""
        if isinstance(self.handler, ResumePoint):
            earliest = self.handler.resume_from()
            if earliest is not None and parse_id(earliest) <= parse_id(self.last_id):
                return previous_id(earliest)
        return self.last_id


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerRuntime:
    """Serves calls of one worker kind with handlers from ``factory``."""

    def __init__(
        self,
        settings: Settings,
        kind: str,
        factory: HandlerFactory,
        *,
        max_calls: int = 50,
        consumer: str | None = None,
        heartbeat_s: float = 1.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, got {max_calls}")
        self._settings = settings
        self._keys = settings.keys
        self._kind = kind
        self._factory = factory
        self._max_calls = max_calls
        self.consumer = consumer or default_consumer()
        self._heartbeat_s = heartbeat_s
        self._group = self._keys.group(kind)
        self._metrics = RuntimeMetrics(registry or CollectorRegistry(), kind)
        self._redis: aioredis.Redis | None = None
        self._calls: dict[str, _Owned] = {}
        self._capacity = asyncio.Event()
        self._idle = asyncio.Event()  # set while no call is owned
        self._idle.set()
        self._main: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._calls)

    @property
    def kind(self) -> str:
        return self._kind

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> WorkerRuntime:
        # No socket timeout: with one, redis-py sends each command under ``asyncio.wait_for``,
        # which on Python 3.11 can swallow a cancellation that lands as the send completes (a
        # replica then kept serving a call it had handed back). Blocking reads are bounded by
        # the server (BLOCK) and by ``asyncio.timeout`` here instead.
        #
        # Connections: each owned call keeps one blocked in XREAD, its handler writes on
        # another, and the claim loop blocks on one more. redis-py's default pool raises "Too
        # many connections" past 100, which failed calls of a replica serving 50 or more; the
        # pool is sized for --max-calls, and a request beyond it waits for a free connection.
        pool = aioredis.BlockingConnectionPool.from_url(
            self._settings.redis_url,
            max_connections=2 * self._max_calls + POOL_SPARE_CONNECTIONS,
            timeout=READ_TIMEOUT_MARGIN_S,
            socket_timeout=None,
            client_name=f"callstream-worker-{self._kind}-{self.consumer}",
        )
        self._redis = aioredis.Redis.from_pool(pool)
        try:
            await self._create_group()
        except (RedisError, OSError) as exc:
            # Not fatal: the claim loop retries until Redis answers (and makes the group then).
            self._metrics.redis_errors.inc()
            log.warning("worker %s: Redis is unavailable (%s); waiting for it", self._kind, exc)
        self._main = asyncio.create_task(self._claim_loop(), name=f"worker-{self._kind}")
        log.info(
            "worker %s (%s) serving up to %d calls", self._kind, self.consumer, self._max_calls
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop taking calls and hand the owned ones back at once; every task is awaited.

        Every loop also checks ``_stopping`` after each await, so a task stops even if its
        cancellation is lost on the way (see ``__aenter__``).
        """
        self._stopping = True
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        owned = list(self._calls.values())
        for item in owned:
            if item.task is not None:
                item.task.cancel()
        for item in owned:
            if item.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await item.task
        if self._redis is not None:
            await self._hand_back(owned)
            await self._redis.aclose()
            self._redis = None
        self._calls.clear()
        self._metrics.owned.set(0)

    async def wait_idle(self) -> None:
        """Wait until this replica owns no call (e.g. its calls have ended)."""
        await self._idle.wait()

    async def wait_closed(self) -> None:
        """Wait until the claim loop ends (it only ends on aclose or a fatal error)."""
        if self._main is not None:
            await asyncio.shield(self._main)

    async def _create_group(self) -> None:
        """The kind's group, from the start of `cs:calls` (a replica started after a call
        began still finds it); another replica may have made it first."""
        assert self._redis is not None
        try:
            await self._redis.xgroup_create(self._keys.calls, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ------------------------------------------------------------------ claiming

    @property
    def _free(self) -> int:
        return self._max_calls - len(self._calls)

    async def _claim_loop(self) -> None:
        assert self._redis is not None
        redis = self._redis
        # A call is taken over once its owner has missed three heartbeats (and at least 1 s, so
        # one slow turn of a busy owner's event loop does not hand its calls around).
        min_idle_ms = int(max(3 * self._heartbeat_s, MIN_TAKEOVER_IDLE_S) * 1000)
        next_heartbeat = time.monotonic()
        backoff_s = 0.1
        while not self._stopping:
            try:
                if time.monotonic() >= next_heartbeat:
                    async with asyncio.timeout(READ_TIMEOUT_MARGIN_S):
                        await self._heartbeat()
                    next_heartbeat = time.monotonic() + self._heartbeat_s
                if self._free > 0:
                    claimed = await redis.xautoclaim(
                        self._keys.calls,
                        self._group,
                        self.consumer,
                        min_idle_ms,
                        start_id="0-0",
                        count=self._free,
                    )
                    for entry_id, fields in cast(StreamEntries, claimed[1]):
                        if fields is not None:
                            await self._take(entry_id.decode(), fields, how="failover")
                if self._free > 0:
                    block_ms = max(1, int((next_heartbeat - time.monotonic()) * 1000))
                    async with asyncio.timeout(block_ms / 1000 + READ_TIMEOUT_MARGIN_S):
                        reply = cast(
                            XReadReply,
                            await redis.xreadgroup(
                                self._group,
                                self.consumer,
                                {self._keys.calls: ">"},
                                count=self._free,
                                block=block_ms,
                            ),
                        )
                    for _, entries in reply or ():
                        for entry_id, fields in entries:
                            await self._take(entry_id.decode(), fields, how="new")
                else:
                    self._capacity.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(
                            asyncio.get_running_loop().time()
                            + max(0.0, next_heartbeat - time.monotonic())
                        ):
                            await self._capacity.wait()
                backoff_s = 0.1
            except (RedisError, OSError) as exc:  # OSError includes TimeoutError
                self._metrics.redis_errors.inc()
                if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                    # cs:calls, and the group with it, is gone: Redis lost its data (a
                    # restart without persistence) or the key was deleted. Without the group
                    # this replica would never take a call again.
                    log.warning(
                        "worker %s: its consumer group is gone (Redis lost its data?); "
                        "recreating it",
                        self._kind,
                    )
                    with contextlib.suppress(RedisError, OSError):  # else: at the next error
                        await self._create_group()
                else:
                    log.warning(
                        "worker %s: Redis error (%s); retrying in %.1f s",
                        self._kind,
                        exc,
                        backoff_s,
                    )
                await asyncio.sleep(backoff_s)
                backoff_s = min(2.0, backoff_s * 2)

    async def _take(self, entry_id: str, fields: dict[bytes, bytes], *, how: str) -> None:
        assert self._redis is not None
        try:
            entry = decode_call(fields)
        except EntryError as exc:
            log.warning(
                "worker %s: dropping malformed calls entry %s: %s", self._kind, entry_id, exc
            )
            await self._redis.xack(self._keys.calls, self._group, entry_id)
            return
        if isinstance(entry, CallEnded):
            await self._redis.xack(self._keys.calls, self._group, entry_id)
            return
        if self._stopping:
            return  # delivered as we stopped: it stays pending and aclose hands it back
        call_id = entry.call_id
        age_s = time.time() - entry.time_ms / 1000
        if call_id in self._calls:
            return  # already ours (redelivered to us): it stays pending until the call ends
        if age_s > self._settings.call_ttl_s and not await self._redis.exists(
            self._keys.call_in(call_id)
        ):
            # An old call whose streams have expired (a new kind's group starts at the head of
            # cs:calls): nothing to serve. A long call still running has its stream.
            await self._redis.xack(self._keys.calls, self._group, entry_id)
            return
        checkpoint, handbacks, error = cast(
            list[bytes | None],
            await self._redis.hmget(
                self._keys.checkpoint(self._kind, call_id), ["entry_id", "handbacks", "error"]
            ),
        )
        if how == "failover":
            attempt = await self._deliveries(entry_id) - int(handbacks or 0)
            if attempt > self._settings.worker_max_attempts:
                await self._abandon(entry_id, entry, attempt - 1, error)
                return
        resume_from = checkpoint.decode() if checkpoint else None
        owned = _Owned(entry_id=entry_id, call=entry, last_id=resume_from or "0-0")
        self._calls[call_id] = owned
        self._idle.clear()
        owned.task = asyncio.create_task(self._serve(owned, resume_from), name=f"call-{call_id}")
        self._metrics.taken.labels(self._kind, how).inc()
        self._metrics.owned.set(len(self._calls))
        log.info(
            "worker %s (%s): took call %s (%s%s)",
            self._kind,
            self.consumer,
            call_id,
            how,
            f", resuming after {resume_from}" if resume_from else "",
        )

    async def _deliveries(self, entry_id: str) -> int:
        """How often the group has delivered this `started` entry (XREADGROUP, XAUTOCLAIM)."""
        assert self._redis is not None
        rows = await self._redis.xpending_range(
            self._keys.calls, self._group, min=entry_id, max=entry_id, count=1
        )
        return int(rows[0]["times_delivered"]) if rows else 1

    async def _abandon(
        self, entry_id: str, call: CallStarted, attempts: int, error: bytes | None
    ) -> None:
        """Give a call up: its processing failed `attempts` times, retrying again would only
        keep a replica busy failing."""
        assert self._redis is not None
        call_id = call.call_id
        last_error = error.decode(errors="replace") if error else "its owner stopped answering"
        event = Event(
            f"{call_id}:{self._kind}:failed",
            call_id,
            WORKER_FAILED,
            int(time.time() * 1000),
            {"kind": self._kind, "attempts": attempts, "error": last_error},
        )
        settings = self._settings
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xack(self._keys.calls, self._group, entry_id)
            for key, maxlen in (
                (self._keys.call_events(call_id), settings.events_maxlen),
                (self._keys.insights, settings.insights_maxlen),
            ):
                pipe.xadd(key, event.fields(), maxlen=maxlen, approximate=True)
            await pipe.execute()
        self._metrics.abandoned.inc()
        log.error(
            "worker %s: gave up call %s after %d failed attempts (CS_WORKER_MAX_ATTEMPTS); "
            "last error: %s",
            self._kind,
            call_id,
            attempts,
            last_error,
        )

    async def _heartbeat(self) -> None:
        """Refresh the claim on the calls still ours; give up those another replica took."""
        assert self._redis is not None
        if not self._calls:
            return
        mine = await self._pending_ids()
        for owned in list(self._calls.values()):
            if owned.entry_id not in mine and not owned.finishing:
                if await self._trimmed(owned):
                    continue
                # Our heartbeat came too late and another replica took the call over: it
                # resumes from our last checkpoint, so we stop rather than claim it back.
                log.warning(
                    "worker %s: call %s was taken over by another replica",
                    self._kind,
                    owned.call.call_id,
                )
                self._metrics.lost.inc()
                self._calls.pop(owned.call.call_id, None)
                if owned.task is not None:
                    owned.task.cancel()
        self._metrics.owned.set(len(self._calls))
        if not self._calls:
            self._idle.set()
            return
        ids: list[StreamIdT] = [owned.entry_id for owned in self._calls.values()]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xclaim(self._keys.calls, self._group, self.consumer, 0, ids, justid=True)
            for owned in self._calls.values():
                self._queue_checkpoint(pipe, owned)
            await pipe.execute()

    async def _trimmed(self, owned: _Owned) -> bool:
        """True when the call's `started` entry is no longer in cs:calls at all, rather than
        claimed by another replica: trimmed (a call older than CS_CALLS_RETENTION_S; XCLAIM
        then drops it from the pending list, so our own heartbeat made it vanish), or lost with
        Redis's data. We go on serving the call: no other replica could take it over now."""
        assert self._redis is not None
        if owned.trimmed:
            return True  # a removed entry does not come back: no need to look again
        if await self._redis.xrange(self._keys.calls, owned.entry_id, owned.entry_id):
            return False
        owned.trimmed = True
        log.warning(
            "worker %s: call %s's `started` entry is gone from %s (older than "
            "CS_CALLS_RETENTION_S, or Redis lost its data): it is served here to its end "
            "but can no longer fail over",
            self._kind,
            owned.call.call_id,
            self._keys.calls,
        )
        return True

    async def _pending_ids(self) -> set[str]:
        """Ids of the `started` entries this consumer holds in the group's pending list."""
        assert self._redis is not None
        rows = await self._redis.xpending_range(
            self._keys.calls,
            self._group,
            min="-",
            max="+",
            count=max(1000, 4 * self._max_calls),
            consumername=self.consumer,
        )
        return {
            row["message_id"].decode()
            if isinstance(row["message_id"], bytes)
            else str(row["message_id"])
            for row in rows
        }

    def _queue_checkpoint(self, pipe: aioredis.client.Pipeline, owned: _Owned) -> None:
        key = self._keys.checkpoint(self._kind, owned.call.call_id)
        pipe.hset(key, mapping={"entry_id": owned.checkpoint, "owner": self.consumer})
        pipe.expire(key, self._settings.call_ttl_s)

    async def _hand_back(self, owned: Sequence[_Owned]) -> None:
        """Save the owned calls' checkpoints and mark every entry this consumer holds (also
        one delivered while it was stopping) as long idle, for another replica to take."""
        assert self._redis is not None
        try:
            held: list[StreamIdT] = [
                *sorted(await self._pending_ids() | {item.entry_id for item in owned})
            ]
            if not held:
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for item in owned:
                    self._queue_checkpoint(pipe, item)
                    # The next owner's claim counts as a delivery; a hand-back is no failure.
                    key = self._keys.checkpoint(self._kind, item.call.call_id)
                    pipe.hincrby(key, "handbacks", 1)
                pipe.xclaim(
                    self._keys.calls,
                    self._group,
                    self.consumer,
                    0,
                    held,
                    idle=HANDBACK_IDLE_MS,
                    justid=True,
                )
                await pipe.execute()
            log.info("worker %s: handed back %d calls", self._kind, len(held))
        except (RedisError, OSError) as exc:
            log.warning(
                "worker %s: could not hand back %d calls (%s); they will be taken over "
                "after their idle timeout",
                self._kind,
                len(owned),
                exc,
            )

    async def _record_failure(self, call_id: str, exc: Exception) -> None:
        assert self._redis is not None
        key = self._keys.checkpoint(self._kind, call_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, "error", f"{type(exc).__name__}: {exc}"[:300])
                pipe.expire(key, self._settings.call_ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as error:  # Redis itself may be why the call failed
            log.warning(
                "worker %s: could not record call %s's error: %s", self._kind, call_id, error
            )

    # ------------------------------------------------------------------ serving one call

    async def _serve(self, owned: _Owned, resume_from: str | None) -> None:
        assert self._redis is not None
        redis = self._redis
        call_id = owned.call.call_id
        key = self._keys.call_in(call_id)
        handler: CallHandler | None = None
        finished = False
        try:
            state_key = self._keys.checkpoint(self._kind, call_id)
            context = CallContext(owned.call, redis, self._settings, resume_from, state_key)
            handler = self._factory(context)
            owned.handler = handler
            block_ms = int(self._heartbeat_s * 1000)
            idle_timeout_s = self._settings.call_idle_timeout_s
            heard_at = time.monotonic()
            while not finished:
                if self._stopping:
                    return  # handed back by aclose, from owned.last_id
                async with asyncio.timeout(block_ms / 1000 + READ_TIMEOUT_MARGIN_S):
                    reply = cast(
                        XReadReply,
                        await redis.xread({key: owned.last_id}, count=READ_COUNT, block=block_ms),
                    )
                if not reply:
                    # A call streams 50 frames a second (silent ones too) until its `end`
                    # entry; nothing at all for this long means the gateway that had it is
                    # gone (or its stream expired): end it, or it would hold capacity for ever.
                    # (Nothing *yet* is normal: the first frame may follow `started`.)
                    if time.monotonic() - heard_at > idle_timeout_s:
                        log.warning(
                            "call %s: no inbound entry for %.0f s (CS_CALL_IDLE_TIMEOUT_S); "
                            "ending it",
                            call_id,
                            idle_timeout_s,
                        )
                        await handler.handle([(owned.last_id, InEnd(IDLE_END_REASON))])
                        # The gateway that would have set the call's TTL is gone: set it
                        # (unless it is set), or the call's streams would stay for ever.
                        async with redis.pipeline(transaction=False) as pipe:
                            for call_key in self._keys.call_keys(call_id):
                                pipe.expire(call_key, self._settings.call_ttl_s, nx=True)
                            await pipe.execute()
                        finished = True
                    continue
                heard_at = time.monotonic()
                batch: list[tuple[str, InEntry]] = []
                for entry_id, fields in reply[0][1]:
                    try:
                        entry = decode_in(fields)
                    except EntryError as exc:
                        log.warning("call %s: skipped entry %s: %s", call_id, entry_id, exc)
                        continue
                    batch.append((entry_id.decode(), entry))
                    if isinstance(entry, InEnd):
                        finished = True
                        break
                if batch:
                    # Stream ids carry Redis's clock: the figure includes the clock offset
                    # between this host and Redis's (NTP keeps it to milliseconds).
                    published_ms = parse_id(batch[0][0])[0]
                    self._metrics.delay.observe(max(0.0, time.time() - published_ms / 1000))
                    await handler.handle(batch)
                    self._metrics.entries.inc(len(batch))
                owned.last_id = batch[-1][0] if batch else reply[0][1][-1][0].decode()
            await handler.aclose()
            handler = None
            owned.finishing = True  # its ack is not a takeover, for a heartbeat racing it
            async with redis.pipeline(transaction=False) as pipe:
                pipe.xack(self._keys.calls, self._group, owned.entry_id)
                pipe.delete(self._keys.checkpoint(self._kind, call_id))
                await pipe.execute()
            self._metrics.finished.inc()
            log.info("worker %s: call %s done", self._kind, call_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The call stays pending: after its idle timeout another replica retries it (up
            # to CS_WORKER_MAX_ATTEMPTS times); the error is kept for the one that gives up.
            self._metrics.failed.inc()
            log.exception("worker %s: call %s failed", self._kind, call_id)
            await self._record_failure(call_id, exc)
        finally:
            if handler is not None:
                with contextlib.suppress(Exception):
                    await handler.aclose()
            if not self._stopping:
                self._calls.pop(call_id, None)
                self._metrics.owned.set(len(self._calls))
                self._capacity.set()
                if not self._calls:
                    self._idle.set()
