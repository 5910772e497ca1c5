"""The worker runtime every kind shares: the Redis shell around :mod:`.ownership`.

* Each kind has a consumer group on ``cs:calls``. A replica with free capacity reads ``started``
  entries with ``XREADGROUP >`` and so owns those calls; it acknowledges the entry only when the
  call is done. The group's pending count is the calls being served, its lag the calls waiting.
  Taking calls costs a fixed number of round trips however many arrive together.
* **One reader per replica.** One task reads every owned call's input (``cs:call:{id}:in``
  and/or ``:events``, :class:`~callstream.workers.api.Inputs`) with one shared ``XREAD``, and
  hands each call's entries to that call's task, which runs its handler. A call whose handler
  is busy is left out of the next read, so a slow call holds back only itself.
* **One writer per replica** (:class:`~.writer.Writer`): handlers' audio and events, checkpoints
  and acknowledgements go out in pipelined batches, in order. Connections and round trips per
  replica do not grow with its calls.
* Every heartbeat the owner re-claims its entries (``XCLAIM … JUSTID``), saves each call's
  checkpoint (read positions and the handler's state, ``cs:ckpt:{kind}:{call}``) and trims
  audio every audio-reading kind has checkpointed past (plus ``CS_AUDIO_REPLAY_MARGIN_S``). A
  replica with capacity ``XAUTOCLAIM``s entries idle for more than three heartbeats: calls of a
  replica that died, resumed at their checkpoint.
* :meth:`WorkerRuntime.aclose` (SIGTERM) stops taking calls, lets each call finish the batch it
  is on, saves checkpoints and marks its entries as long idle (``XCLAIM … IDLE``), so another
  replica takes them at its next claim.
* A call whose processing failed is retried by the next replica to claim it, up to
  ``CS_WORKER_MAX_ATTEMPTS`` attempts; then it is given up (``worker.failed``). Failures of
  Redis are not the call's: a call whose writes were lost to an outage (Redis unreachable,
  silent, out of memory, …) restarts on the same replica from its last saved checkpoint once
  Redis answers again, and a call taken over because its owner could not reach Redis counts
  as handed back. Neither uses up an attempt.
* When a call's input is complete the handler is closed, ``{kind}.done`` is published, the
  entry acknowledged and the checkpoint marked done.
* **Live calls first.** A call that is over when the kind gets it (it began and ended while no
  replica served it: an outage, a new kind) is *backlog*: the replica keeps its entry (claimed
  at every heartbeat) but defers it, reads on to the live calls behind it, and serves backlog
  only with the capacity live calls leave — each backlog call read at
  ``CS_WORKER_BACKLOG_SPEED`` times real time and counted as that many calls. A live call
  arriving at a full replica parks a backlog call (checkpointed, deferred again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError, ResponseError
from redis.typing import StreamIdT

from callstream.bus.reader import Reply, StreamReader, fields
from callstream.bus.url import dead_connection_retry
from callstream.shared.entries import (
    CallEnded,
    CallStarted,
    RawFields,
    StreamEntries,
    XReadReply,
    parse_id,
)
from callstream.shared.errors import BusError, ConfigError, EventError
from callstream.shared.events import WORKER_FAILED, Event
from callstream.shared.settings import Settings
from callstream.workers.api import (
    AUDIO,
    CallContext,
    CallHandler,
    HandlerFactory,
    Inputs,
    Kind,
    ResumePoint,
)
from callstream.workers.ownership import (
    ALL,
    F_DONE,
    F_ERROR,
    F_EVENTS,
    F_HANDBACKS,
    F_IN,
    F_OWNER,
    IDLE_END_REASON,
    START,
    UNTIL_MISSING_REASON,
    Abandon,
    Ack,
    Batch,
    CallInput,
    Checkpoint,
    Take,
    audio_trim_id,
    backlog_cost,
    checkpoint_fields,
    classify_missing,
    decide,
    is_over,
    missing_entries,
    needs_stream_check,
    parse_offer,
    resume_point,
)
from callstream.workers.ports import InsightsView, RedisAudioOut, RedisEventOut
from callstream.workers.writer import Writer, WriterMetrics

log = logging.getLogger(__name__)

READ_COUNT = 100  # entries per stream per read, at most
# ... and per read, all streams together: with many calls behind (a backlog, a replica that
# stalled) each gets a share, so one turn of the event loop does not run every call's handler
# over a hundred entries (an nlp replica stalled for 20 s so). A live call needs a frame per
# 20 ms: at 10 ms reads even the floor keeps a replica of hundreds of calls ahead.
READ_BUDGET = 1000
MIN_READ_COUNT = 5
READ_BLOCK_MS = 100  # bound on how long a newly readable call waits to join the shared read
READ_INTERVAL_S = 0.01  # the shared read runs at most this often: bigger batches, less CPU
MIN_TAKEOVER_IDLE_S = 1.0
READ_TIMEOUT_MARGIN_S = 5.0  # a blocking read not answered this long after its BLOCK failed
# redis-py's pool: the claim loop (blocked in XREADGROUP), the heartbeat and short pipelines
# (takes, trims, finishes), which wait for a free connection. The shared read and the writer
# have connections of their own (callstream.bus).
POOL_CONNECTIONS = 6
HANDBACK_IDLE_MS = 10**9  # "idle for 11 days": any replica's XAUTOCLAIM takes it at once
HISTORY_EVENTS = 2000  # a new owner's look back over the call's events
STOP_GRACE_S = 2.0  # at aclose, how long a call may take to finish the batch it is on
KINDS_REFRESH_S = 10.0  # how often the list of audio-reading kinds is read again
EMPTY_STATE = "{}"
FRAME_S = 0.02  # a backlog call is paced as if every entry were a frame
# How a call was taken when others may have published results for it already (a replica
# that died, one that handed it back, a backlog call deferred after either, one rewound here).
TAKEN_OVER = frozenset({"failover", "backlog", "rewind"})


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
            "Input entries handed to handlers",
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
            "Input entry published (its stream id's time) -> read for its handler, per shared "
            "read (its oldest entry): grows without bound when a replica is slower than real time",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        ).labels(kind)
        self.reads = Counter(
            "callstream_worker_reads_total",
            "Shared reads of the owned calls' input streams",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.deferred = Gauge(
            "callstream_worker_backlog_calls",
            "Calls over before they were taken, held to be served behind live calls",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.throttled = Counter(
            "callstream_worker_throttles_total",
            "Times a call was not read because its audio waiting to be played passed half "
            "of CS_OUT_STREAM_MAXLEN",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.throttled_now = Gauge(
            "callstream_worker_throttled_calls",
            "Calls not read now: their audio waiting to be played is too long",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.rewound = Counter(
            "callstream_worker_calls_rewound_total",
            "Calls restarted from their checkpoint on this replica after an outage lost their "
            "writes (not failed attempts)",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.redis_errors = Counter(
            "callstream_worker_redis_errors_total", "Redis errors", ["kind"], registry=registry
        ).labels(kind)


@dataclass(eq=False)
class _Call:
    """One owned call: its input, its handler's task, where it stands."""

    entry_id: str  # the call's `started` entry in cs:calls
    call: CallStarted
    input: CallInput
    ctx: CallContext
    events: RedisEventOut
    processed_in: str  # the last inbound entry the handler has processed
    processed_events: str
    heard_at: float  # monotonic: the last inbound entry seen
    handler: CallHandler | None = None
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    batch: Batch | None = None
    busy: bool = True  # a batch is being handled (or the handler is being made)
    snapshot: tuple[str, str, str] | None = None  # (audio resume, events, state JSON)
    want_snapshot: bool = False  # a heartbeat found it busy: snapshot after this batch
    in_last: str | None = None  # events-only kinds: the call's last inbound id at a heartbeat
    ended_at: float | None = None  # monotonic: call.ended seen, `until` not yet
    finishing: bool = False  # processed to its end: being acknowledged
    trimmed: bool = False  # its `started` entry left cs:calls (trimmed, or Redis lost it)
    error: str | None = None  # a write of this call failed
    backlog: bool = False  # over before it was taken: paced, parked for live calls
    next_read: float = 0.0  # monotonic: a backlog call is not read before
    parking: bool = False  # a live call needs its capacity: defer it after this batch
    audio_out: RedisAudioOut | None = None
    changed: bool = True  # a batch was handled since the last snapshot
    saved: tuple[str, str, str] | None = None  # the snapshot last written, and when
    saved_at: float = 0.0
    throttled: bool = False  # its out stream is too long: not read until egress catches up
    unplayed: bool = False  # over while throttled: nobody will play its audio, read it to its end
    outage: bool = False  # ... because Redis failed, not because of the call: rewind it

    @property
    def call_id(self) -> str:
        return self.call.call_id


class WriteFailed(BusError):
    """Redis refused (or could not take) a write of this call."""


def read_count(streams: int) -> int:
    """Entries per stream of a shared read over ``streams`` streams."""
    return max(MIN_READ_COUNT, min(READ_COUNT, READ_BUDGET // max(1, streams)))


def redacting_view() -> InsightsView:
    """CS_REDACT=1: transcripts reach cs:insights redacted, DTMF not at all (docs/nlp.md)."""
    try:
        from callstream.workers.nlp.redaction import insights_view  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"CS_REDACT=1 needs the nlp extra (pip install 'callstream[nlp]'): {exc}"
        ) from None
    return insights_view


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
        inputs: Inputs = AUDIO,
        max_calls: int = 50,
        consumer: str | None = None,
        heartbeat_s: float = 1.0,
        registry: CollectorRegistry | None = None,
        options: argparse.Namespace | None = None,
    ) -> None:
        if max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, got {max_calls}")
        self._settings = settings
        self._keys = settings.keys
        self._kind = kind
        self._factory = factory
        self._inputs = inputs
        self._max_calls = max_calls
        self.consumer = consumer or default_consumer()
        self._heartbeat_s = heartbeat_s
        self._options = options or argparse.Namespace()
        self._group = self._keys.group(kind)
        registry = registry or CollectorRegistry()
        self._metrics = RuntimeMetrics(registry, kind)
        self._writer_metrics = WriterMetrics(registry, kind)
        self._redis: aioredis.Redis | None = None
        self._reader: StreamReader | None = None
        self._writer: Writer | None = None
        self._calls: dict[str, _Call] = {}
        self._capacity = asyncio.Event()
        self._readable = asyncio.Event()  # a call's input can be read again
        self._idle = asyncio.Event()  # set while no call is owned
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.failure: Exception | None = None  # what ended one of the runtime's loops
        self._redis_ok = False
        self._redis_error = "not connected yet"
        self._outage = False  # Redis failed since the last heartbeat that went through
        self._heartbeat_lock = asyncio.Lock()  # the loop's and a recovering claim loop's
        self._group_ok = False
        # Backlog calls waiting (call id -> its `started` entry id and call), oldest first.
        self._deferred: dict[str, tuple[str, CallStarted]] = {}
        self._backlog_speed = max(settings.worker_backlog_speed, 0.1)
        self._backlog_cost = backlog_cost(self._backlog_speed, max_calls)
        # When each backlog "lane" may be read again: a backlog call that finishes hands its
        # pace to the next, so short calls one after another go no faster than long ones.
        self._lanes: list[float] = []
        self._audio_kinds: list[str] = [kind] if inputs.audio else []
        self._insights_view = redacting_view() if settings.redact else None
        self._kinds_read_at = -KINDS_REFRESH_S
        self._kinds_lock = asyncio.Lock()  # one refresh at a time (calls finish together)

    @classmethod
    def for_kind(
        cls, settings: Settings, kind: Kind, options: argparse.Namespace, **kwargs: Any
    ) -> WorkerRuntime:
        return cls(
            settings,
            kind.name,
            kind.factory(options),
            inputs=kind.inputs,
            options=options,
            **kwargs,
        )

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._calls)

    @property
    def kind(self) -> str:
        return self._kind

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): connected to Redis, its group present, not draining."""
        if self._stopping:
            return False, "draining: handing its calls back"
        if not self._redis_ok:
            return False, f"Redis unavailable: {self._redis_error}"
        if not self._group_ok:
            return False, f"consumer group {self._group} not created yet"
        return True, "ready"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> WorkerRuntime:
        # No socket timeout: with one, redis-py sends each command under ``asyncio.wait_for``,
        # which on Python 3.11 can swallow a cancellation that lands as the send completes (a
        # replica then kept serving a call it had handed back). Blocking reads are bounded by
        # the server (BLOCK) and by ``asyncio.timeout`` here instead. The pool does not grow
        # with the calls: one reader, one writer, the claim loop and short pipelines.
        client_name = f"callstream-worker-{self._kind}-{self.consumer}"
        pool = aioredis.BlockingConnectionPool.from_url(
            self._settings.redis_url,
            max_connections=POOL_CONNECTIONS,
            timeout=READ_TIMEOUT_MARGIN_S,
            socket_timeout=None,
            client_name=client_name,
            retry=dead_connection_retry(),  # a pooled connection Redis closed: once more
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._reader = StreamReader(self._settings.redis_url, client_name=client_name)
        self._writer = Writer(
            self._settings.redis_url,
            self._writer_metrics,
            self._on_write_failure,
            on_bus_failure=self._on_bus_failure,
            client_name=client_name,
            flush_interval_s=self._settings.flush_interval_ms / 1000,
        )
        await self._writer.__aenter__()
        try:
            await self._register()
        except (RedisError, OSError) as exc:
            # Not fatal: the claim loop retries until Redis answers (and makes the group then).
            self._redis_down(exc)
            log.warning("worker %s: Redis is unavailable (%s); waiting for it", self._kind, exc)
        for name, loop in (
            ("claim", self._claim_loop),
            ("reader", self._read_loop),
            ("heartbeat", self._heartbeat_loop),
        ):
            self._tasks.append(
                asyncio.create_task(self._guard(name, loop), name=f"worker-{self._kind}-{name}")
            )
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
        if self._stopping and not self._tasks and self._redis is None:
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        owned = list(self._calls.values())
        for item in owned:
            item.wake.set()  # a call waiting for input returns; one in a batch finishes it
        running = [item.task for item in owned if item.task is not None and not item.task.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._redis is not None:
            await self._hand_back(owned)
            assert self._writer is not None
            await self._writer.aclose()
            if self._reader is not None:
                await self._reader.aclose()
            await self._redis.aclose()
            self._redis = None
        self._calls.clear()
        self._deferred.clear()
        self._metrics.owned.set(0)
        self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until this replica owns no call (e.g. its calls have ended)."""
        await self._idle.wait()

    async def wait_closed(self) -> None:
        """Wait until the runtime stops (on aclose, or a fatal error in one of its loops)."""
        if self._tasks:
            await asyncio.wait(
                [asyncio.shield(task) for task in self._tasks], return_when=asyncio.FIRST_COMPLETED
            )

    async def _register(self) -> None:
        """The kind's group, from the start of `cs:calls` (a replica started after a call
        began still finds it), and its inputs in the kinds hash (for trimming)."""
        assert self._redis is not None
        try:
            await self._redis.xgroup_create(self._keys.calls, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self._redis.hset(self._keys.kinds, self._kind, json.dumps(self._inputs.as_json()))
        self._group_ok = True
        self._redis_up()

    async def _guard(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of the runtime's loops; one that fails (a bug: they retry Redis errors
        themselves) is logged and ends the runtime (``wait_closed``, ``failure``)."""
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("worker %s: its %s loop failed", self._kind, name)
            self.failure = exc

    def _halted(self) -> bool:
        """Whether aclose has begun (checked after awaits: a cancellation can be lost)."""
        return self._stopping

    def _redis_up(self) -> None:
        self._redis_ok = True
        self._redis_error = ""

    def _redis_down(self, exc: BaseException) -> None:
        self._metrics.redis_errors.inc()
        self._redis_ok = False
        self._outage = True
        for call in self._calls.values():
            call.saved = None  # a checkpoint write may have been lost: write them again
        self._redis_error = str(exc) or type(exc).__name__

    # ------------------------------------------------------------------ claiming

    @property
    def _free(self) -> int:
        """Room for live calls (backlog calls give theirs up: see _make_room)."""
        return self._max_calls - sum(1 for call in self._calls.values() if not call.backlog)

    def _holds(self, call_id: str) -> bool:
        return call_id in self._calls or call_id in self._deferred

    def _load(self) -> int:
        backlog = sum(1 for call in self._calls.values() if call.backlog and not call.parking)
        return len(self._calls) - backlog + backlog * self._backlog_cost

    async def _claim_loop(self) -> None:
        assert self._redis is not None
        redis = self._redis
        # A call is taken over once its owner has missed three heartbeats (and at least 1 s, so
        # one slow turn of a busy owner's event loop does not hand its calls around).
        min_idle_ms = int(max(3 * self._heartbeat_s, MIN_TAKEOVER_IDLE_S) * 1000)
        next_autoclaim = 0.0
        backoff_s = 0.1
        while not self._stopping:
            try:
                if not self._group_ok:
                    await self._register()
                if self._outage and self._calls:
                    # Back from an outage: re-claim our own calls before claiming idle ones,
                    # which now include ours (XAUTOCLAIM would count a delivery for each).
                    await self._heartbeat()
                if self._free > 0 and time.monotonic() >= next_autoclaim:
                    next_autoclaim = time.monotonic() + self._heartbeat_s
                    claimed = await redis.xautoclaim(
                        self._keys.calls,
                        self._group,
                        self.consumer,
                        min_idle_ms,
                        start_id="0-0",
                        count=self._free,
                    )
                    await self._offer(cast(StreamEntries, claimed[1]), how="failover")
                if self._halted():
                    return
                if self._free > 0:
                    block_ms = max(1, int((next_autoclaim - time.monotonic()) * 1000))
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
                        await self._offer(entries, how="new")
                    await self._start_backlog()
                else:
                    self._capacity.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._heartbeat_s):
                            await self._capacity.wait()
                    await self._start_backlog()
                self._redis_up()
                backoff_s = 0.1
            except (RedisError, OSError) as exc:  # OSError includes TimeoutError
                self._redis_down(exc)
                if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                    # cs:calls, and the group with it, is gone: Redis lost its data (a
                    # restart without persistence) or the key was deleted. Without the group
                    # this replica would never take a call again.
                    log.warning(
                        "worker %s: its consumer group is gone (Redis lost its data?); "
                        "recreating it",
                        self._kind,
                    )
                    self._group_ok = False
                else:
                    log.warning(
                        "worker %s: Redis error (%s); retrying in %.1f s",
                        self._kind,
                        exc,
                        backoff_s,
                    )
                await asyncio.sleep(backoff_s)
                backoff_s = min(2.0, backoff_s * 2)

    async def _offer(self, entries: StreamEntries, *, how: str) -> None:
        """Decide on delivered `started` entries, with a fixed number of round trips."""
        if entries:
            offers = [(entry_id.decode(), parse_offer(fields)) for entry_id, fields in entries]
            await self._decide(offers, how=how)

    async def _start_backlog(self) -> None:
        """Serve deferred backlog calls with the capacity live calls leave."""
        room = (self._max_calls - self._load()) // self._backlog_cost
        if room <= 0 or not self._deferred or self._stopping:
            return
        chosen = list(self._deferred.items())[:room]
        for call_id, _ in chosen:
            del self._deferred[call_id]
        self._metrics.deferred.set(len(self._deferred))
        await self._decide([(entry_id, call) for _, (entry_id, call) in chosen], how="backlog")

    async def _decide(
        self, offers: Sequence[tuple[str, CallStarted | CallEnded | str]], *, how: str
    ) -> None:
        """``how``: ``new`` (XREADGROUP), ``failover`` (XAUTOCLAIM) or ``backlog`` (deferred
        here, now served)."""
        assert self._redis is not None
        assert self._writer is not None
        now_ms = int(time.time() * 1000)
        looked_up: list[tuple[str, CallStarted, bool]] = []  # (entry, call, xpending)
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, offer in offers:
                if not isinstance(offer, CallStarted) or self._holds(offer.call_id):
                    continue
                pipe.hgetall(self._keys.checkpoint(self._kind, offer.call_id))
                if how == "failover":
                    pipe.xpending_range(
                        self._keys.calls, self._group, min=entry_id, max=entry_id, count=1
                    )
                pipe.xrevrange(self._keys.call_in(offer.call_id), count=1)
                looked_up.append((entry_id, offer, how == "failover"))
            replies: list[Any] = await pipe.execute() if looked_up else []
        answers: dict[str, tuple[Checkpoint, int, bool, bool]] = {}
        at = 0
        idle_s = self._settings.call_idle_timeout_s
        for entry_id, offer, pending in looked_up:
            checkpoint = Checkpoint.parse(replies[at])
            at += 1
            deliveries = 1
            if pending:
                rows = replies[at]
                at += 1
                deliveries = int(rows[0]["times_delivered"]) if rows else 1
            last = cast(StreamEntries, replies[at])
            at += 1
            # Only an old call's stream may have expired (an events-only kind can see a
            # young call's audio deleted, every audio-reading kind being done with it).
            exists = bool(last) or not needs_stream_check(offer, now_ms, self._settings.call_ttl_s)
            over = is_over(last[0] if last else None, now_ms, idle_s)
            answers[entry_id] = (checkpoint, deliveries, exists, over)
        takes: list[tuple[str, Take]] = []
        backlog: set[str] = set()
        given_up = 0
        for entry_id, offer in offers:
            checkpoint, deliveries, exists, over = answers.get(
                entry_id, (Checkpoint(), 1, True, False)
            )
            decision = decide(
                offer,
                how=how,
                owned=self._calls.keys()
                | self._deferred.keys()
                | {t.call.call_id for _, t in takes},
                stopping=self._stopping,
                checkpoint=checkpoint,
                deliveries=deliveries,
                stream_exists=exists,
                max_attempts=self._settings.worker_max_attempts,
            )
            if isinstance(decision, Take):
                call_id = decision.call.call_id
                if how == "backlog":
                    backlog.add(call_id)
                elif over and len(self._deferred) < self._settings.worker_max_deferred:
                    # Over already: behind every live call (ours stays claimed meanwhile).
                    self._deferred[call_id] = (entry_id, decision.call)
                    self._metrics.deferred.set(len(self._deferred))
                    continue
                takes.append((entry_id, decision))
            elif isinstance(decision, Ack):
                if decision.why.startswith("malformed"):
                    log.warning(
                        "worker %s: dropping calls entry %s: %s", self._kind, entry_id, decision.why
                    )
                self._writer.add("", "XACK", self._keys.calls, self._group, entry_id)
            elif isinstance(decision, Abandon):
                self._abandon(entry_id, decision)
                given_up += 1
        if given_up:
            await self._writer.drain()  # acknowledged and announced before it is counted
            self._metrics.abandoned.inc(given_up)
        if takes:
            # A call delivered before may have had results published by its previous owner,
            # which died before saving a checkpoint: look at its events whenever it is not new.
            resumed = how in TAKEN_OVER
            histories = await self._histories([take for _, take in takes], resumed)
            for (entry_id, take), history in zip(takes, histories, strict=True):
                self._take(entry_id, take, history, how, backlog=take.call.call_id in backlog)
            self._make_room()

    def _make_room(self) -> None:
        """Live calls come first: while the replica is over its capacity, park the backlog
        calls taken last (each finishes the batch it is on, is checkpointed and deferred)."""
        excess = self._load() - self._max_calls
        for call in reversed(list(self._calls.values())):
            if excess <= 0:
                return
            if call.backlog and not call.parking and not call.finishing:
                call.parking = True
                call.wake.set()
                excess -= self._backlog_cost

    async def _histories(self, takes: Sequence[Take], taken_over: bool) -> list[list[Event]]:
        """The recent events of the calls taken over (for their handlers and the dedupe)."""
        assert self._redis is not None
        resumed = [take for take in takes if taken_over or take.checkpoint.exists]
        found: dict[str, list[Event]] = {}
        if resumed:
            async with self._redis.pipeline(transaction=False) as pipe:
                for take in resumed:
                    pipe.xrevrange(self._keys.call_events(take.call.call_id), count=HISTORY_EVENTS)
                replies = await pipe.execute()
            for take, raw in zip(resumed, replies, strict=True):
                events: list[Event] = []
                for _, fields in reversed(cast(StreamEntries, raw)):
                    with contextlib.suppress(EventError):
                        events.append(Event.from_fields(fields))
                found[take.call.call_id] = events
        return [found.get(take.call.call_id, []) for take in takes]

    def _take(
        self, entry_id: str, take: Take, history: list[Event], how: str, *, backlog: bool = False
    ) -> None:
        assert self._writer is not None
        call, checkpoint = take.call, take.checkpoint
        call_id = call.call_id
        call_input = CallInput(
            self._inputs,
            self._keys.call_in(call_id),
            self._keys.call_events(call_id),
            checkpoint.in_id,
            checkpoint.events_id,
        )
        events = RedisEventOut(
            self._writer,
            call_id,
            self._settings,
            (event.id for event in history),
            insights_view=self._insights_view,
        )
        audio_out = RedisAudioOut(self._writer, call_id, self._settings)
        ctx = CallContext(
            call=call,
            kind=self._kind,
            audio=audio_out,
            events=events,
            state=dict(checkpoint.state),
            resumed=how in TAKEN_OVER or checkpoint.exists,
            history=tuple(history),
            participants=call_input.participants,
            options=self._options,
        )
        owned = _Call(
            entry_id=entry_id,
            call=call,
            input=call_input,
            ctx=ctx,
            events=events,
            processed_in=checkpoint.in_id,
            processed_events=checkpoint.events_id,
            heard_at=time.monotonic(),
            audio_out=audio_out,
            backlog=backlog,
            next_read=heapq.heappop(self._lanes) if backlog and self._lanes else 0.0,
        )
        self._calls[call_id] = owned
        self._idle.clear()
        owned.task = asyncio.create_task(self._serve(owned), name=f"call-{call_id}")
        self._metrics.taken.labels(self._kind, how).inc()
        self._metrics.owned.set(len(self._calls))
        log.info(
            "worker %s (%s): took call %s (%s%s)",
            self._kind,
            self.consumer,
            call_id,
            how,
            f", resuming after {checkpoint.in_id}" if checkpoint.resumed else "",
        )

    def _abandon(self, entry_id: str, decision: Abandon) -> None:
        """Give a call up: its processing failed that often, retrying again would only keep a
        replica busy failing."""
        assert self._writer is not None
        call_id = decision.call.call_id
        event = Event(
            f"{call_id}:{WORKER_FAILED}:{self._kind}",
            call_id,
            WORKER_FAILED,
            int(time.time() * 1000),
            {"kind": self._kind, "attempts": decision.attempts, "error": decision.error},
        )
        RedisEventOut(self._writer, call_id, self._settings).publish_event(event)
        self._mark_done(call_id, entry_id, Checkpoint())
        log.error(
            "worker %s: gave up call %s after %d failed attempts (CS_WORKER_MAX_ATTEMPTS); "
            "last error: %s",
            self._kind,
            call_id,
            decision.attempts,
            decision.error,
        )

    def _mark_done(self, call_id: str, entry_id: str, checkpoint: Checkpoint) -> None:
        """Acknowledge the call's entry; its checkpoint says the kind is done with it (so the
        call's audio need not be kept for this kind any more)."""
        assert self._writer is not None
        key = self._keys.checkpoint(self._kind, call_id)
        self._writer.add("", "XACK", self._keys.calls, self._group, entry_id)
        self._writer.add(
            call_id,
            "HSET",
            key,
            F_IN,
            checkpoint.in_id,
            F_EVENTS,
            checkpoint.events_id,
            F_DONE,
            "1",
            F_OWNER,
            self.consumer,
        )
        self._writer.add(call_id, "EXPIRE", key, self._settings.call_ttl_s)

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        backoff_s = 0.1
        while not self._stopping:
            streams: dict[str, str] = {}
            owners: dict[str, _Call] = {}
            now = time.monotonic()
            wait_s = self._heartbeat_s
            for call in self._calls.values():
                if call.busy or call.finishing or call.throttled:
                    continue
                if call.next_read > now:  # a backlog call ahead of its pace
                    wait_s = min(wait_s, call.next_read - now)
                    continue
                for key, position in call.input.streams().items():
                    streams[key] = position
                    owners[key] = call
            if not streams:
                self._readable.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._readable.wait()
                continue
            try:
                async with asyncio.timeout(READ_BLOCK_MS / 1000 + READ_TIMEOUT_MARGIN_S):
                    count = read_count(len(streams))
                    reply = await reader.xread(streams, count=count, block_ms=READ_BLOCK_MS)
            except (BusError, OSError) as exc:
                self._redis_down(exc)
                log.warning(
                    "worker %s: reading calls failed (%s); retrying in %.1f s",
                    self._kind,
                    exc,
                    backoff_s,
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(2.0, backoff_s * 2)
                continue
            backoff_s = 0.1
            self._metrics.reads.inc()
            if self._halted():
                return
            self._dispatch(reply, owners, count)
            await asyncio.sleep(READ_INTERVAL_S)

    def _dispatch(self, reply: Reply, owners: dict[str, _Call], count: int) -> None:
        now = time.monotonic()
        read: dict[_Call, tuple[StreamEntries, StreamEntries]] = {}
        for raw_key, raw in reply:
            key = raw_key.decode()  # only the streams that had entries
            call = owners.get(key)
            if call is None or self._calls.get(call.call_id) is not call:
                continue  # dropped (lost, failed) while the read was out
            if call.throttled:
                continue  # throttled while the read was out: read again when let go
            entries = [(entry_id, fields(flat)) for entry_id, flat in raw]
            audio, events = read.get(call, ([], []))
            if key == call.input.in_key:
                audio = entries
            else:
                events = entries
            read[call] = (audio, events)
        oldest: str | None = None
        handed = 0
        for call, (audio, events) in read.items():
            batch = call.input.receive(
                cast(Sequence[tuple[bytes, RawFields]], audio),
                cast(Sequence[tuple[bytes, RawFields]], events),
                count,
            )
            for why in batch.skipped:
                log.warning("call %s: skipped %s", call.call_id, why)
            if audio:
                call.heard_at = now
            if call.backlog:
                paced = (len(audio) + len(events)) * FRAME_S / self._backlog_speed
                call.next_read = max(call.next_read, now) + paced
            if call.input.call_ended and call.ended_at is None:
                call.ended_at = now
            if batch.items:
                handed += len(batch.items)
                first = batch.items[0][0]
                # An events-only kind's end of input carries no entry of its own ("0-0").
                if first != START and (oldest is None or parse_id(first) < parse_id(oldest)):
                    oldest = first
            call.batch = batch
            call.busy = True
            call.wake.set()
        if oldest is not None:
            # Stream ids carry Redis's clock: the figure includes the clock offset between
            # this host and Redis's (NTP keeps it to milliseconds).
            self._metrics.delay.observe(max(0.0, time.time() - parse_id(oldest)[0] / 1000))
            self._metrics.entries.inc(handed)

    # ------------------------------------------------------------------ serving one call

    async def _serve(self, call: _Call) -> None:
        handler: CallHandler | None = None
        rewind = False
        try:
            handler = self._factory(call.ctx)
            call.handler = handler
            call.busy = False
            self._readable.set()
            while True:
                await call.wake.wait()
                call.wake.clear()
                if call.error is not None:
                    raise WriteFailed(call.error)
                if self._stopping:
                    return  # handed back by aclose, from the last processed batch
                batch, call.batch = call.batch, None
                if batch is None:
                    if call.parking:
                        self._park(call)
                        return
                    continue
                if batch.items:
                    await handler.handle(batch.items)
                call.changed = True
                if batch.last_in is not None:
                    call.processed_in = batch.last_in
                if batch.last_event is not None:
                    call.processed_events = batch.last_event
                if call.want_snapshot:
                    self._take_snapshot(call)
                if call.error is not None:
                    raise WriteFailed(call.error)
                if call.input.complete:
                    break
                if call.parking:
                    self._park(call)
                    return
                if self._halted():
                    return
                call.busy = False
                self._readable.set()
            await handler.aclose()
            handler = None
            await self._finish(call)
        except asyncio.CancelledError:
            raise
        except WriteFailed as exc:
            if call.outage:
                rewind = True
                log.warning(
                    "worker %s: call %s lost writes to a Redis failure (%s); it restarts here "
                    "from its checkpoint once Redis answers",
                    self._kind,
                    call.call_id,
                    exc,
                )
            else:
                self._failed(call, exc)
        except Exception as exc:
            self._failed(call, exc)
        finally:
            if handler is not None:
                with contextlib.suppress(Exception):
                    await handler.aclose()
            if rewind and not self._stopping:
                call.busy = True  # out of the shared read until it is taken again
                call.task = asyncio.create_task(self._rewind(call), name=f"rewind-{call.call_id}")
            elif not self._stopping:
                self._drop(call)

    def _park(self, call: _Call) -> None:
        """Defer a backlog call for a live one: checkpointed, first in line again (its entry
        stays ours; the handler is closed, and a later owner resumes at the checkpoint)."""
        self._save_checkpoint(call)
        self._deferred = {call.call_id: (call.entry_id, call.call), **self._deferred}
        self._metrics.deferred.set(len(self._deferred))
        log.info("worker %s: parked backlog call %s for a live call", self._kind, call.call_id)

    def _failed(self, call: _Call, exc: Exception) -> None:
        """The call stays pending: after its idle timeout another replica retries it (up to
        CS_WORKER_MAX_ATTEMPTS times); the error is kept for the one that gives up."""
        self._metrics.failed.inc()
        log.exception("worker %s: call %s failed", self._kind, call.call_id, exc_info=exc)
        self._record_failure(call.call_id, exc)

    async def _rewind(self, call: _Call) -> None:
        """Take a call whose writes an outage lost again, here, from its last saved checkpoint
        (as a new owner would, with the events it published since); its entry never left this
        replica, so no delivery, and no attempt, is counted."""
        assert self._redis is not None
        key = self._keys.checkpoint(self._kind, call.call_id)
        backoff_s = 0.1
        while not self._stopping and self._calls.get(call.call_id) is call:
            try:
                async with asyncio.timeout(READ_TIMEOUT_MARGIN_S):
                    raw = cast(dict[bytes, bytes], await self._redis.hgetall(key))
                    checkpoint = Checkpoint.parse(raw)
                    take = Take(call.call, checkpoint)
                    [history] = await self._histories([take], taken_over=True)
            except (RedisError, OSError) as exc:
                self._redis_down(exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(2.0, backoff_s * 2)
                continue
            if self._stopping or self._calls.get(call.call_id) is not call:
                return
            self._metrics.rewound.inc()
            self._take(call.entry_id, take, history, "rewind")
            return

    def _drop(self, call: _Call) -> None:
        if call.backlog:
            heapq.heappush(self._lanes, call.next_read)
            del self._lanes[self._max_calls :]
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]
        self._metrics.owned.set(len(self._calls))
        self._capacity.set()
        if not self._calls:
            self._idle.set()

    async def _finish(self, call: _Call) -> None:
        """The call's input is complete and its handler closed: say so, acknowledge, trim."""
        assert self._writer is not None
        call.finishing = True  # its ack is not a takeover, for a heartbeat racing it
        reason = call.input.end_reason or "normal"
        call.events.publish(f"{self._kind}.done", {"kind": self._kind, "reason": reason})
        if reason == IDLE_END_REASON:
            self._expire_call_keys(call.call_id)
        self._mark_done(
            call.call_id,
            call.entry_id,
            Checkpoint(in_id=call.processed_in, events_id=call.processed_events),
        )
        await self._writer.drain()
        if self._inputs.audio:
            # After our `done` is written: of two kinds finishing together, at least the
            # second to look sees both done, and deletes the audio.
            await self._trim([call], finished=True)
            await self._writer.drain()
        if call.error is not None:
            raise WriteFailed(call.error)
        self._metrics.finished.inc()
        log.info("worker %s: call %s done (%s)", self._kind, call.call_id, reason)

    def _record_failure(self, call_id: str, exc: Exception) -> None:
        assert self._writer is not None
        key = self._keys.checkpoint(self._kind, call_id)
        self._writer.add("", "HSET", key, F_ERROR, f"{type(exc).__name__}: {exc}"[:300])
        self._writer.add("", "EXPIRE", key, self._settings.call_ttl_s)

    def _on_bus_failure(self, error: str) -> None:
        self._redis_down(BusError(error))

    def _on_write_failure(self, call_id: str, error: str, bus_wide: bool) -> None:
        call = self._calls.get(call_id)
        if call is not None and call.error is None:
            call.error = error
            call.outage = bus_wide
            call.wake.set()

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._heartbeat_s)
            if self._halted():
                return
            try:
                async with asyncio.timeout(READ_TIMEOUT_MARGIN_S):
                    await self._heartbeat()
            except (RedisError, OSError) as exc:
                self._redis_down(exc)
                log.warning("worker %s: heartbeat failed: %s", self._kind, exc)

    async def _heartbeat(self) -> None:
        """Refresh the claim on the calls still ours, give up those another replica took,
        save checkpoints, end calls gone quiet, trim audio."""
        async with self._heartbeat_lock:
            await self._beat()
        self._redis_up()

    async def _beat(self) -> None:
        assert self._redis is not None
        if not self._calls and not self._deferred:
            self._outage = False
            return
        outage = self._outage
        mine = await self._pending_ids()
        deferred = {call_id: entry_id for call_id, (entry_id, _) in self._deferred.items()}
        owned = {c.call_id: c.entry_id for c in self._calls.values()} | deferred
        settled = {c.call_id for c in self._calls.values() if c.finishing or c.trimmed}
        missing = missing_entries(owned, mine, settled)
        if missing:
            async with self._redis.pipeline(transaction=False) as pipe:
                for call_id in missing:
                    entry_id = owned[call_id]
                    pipe.xrange(self._keys.calls, entry_id, entry_id)
                present = [bool(found) for found in await pipe.execute()]
            lost, trimmed = classify_missing(missing, present)
            for call_id in missing:
                if self._deferred.pop(call_id, None) is not None:
                    log.warning(
                        "worker %s: backlog call %s left this replica before it was served",
                        self._kind,
                        call_id,
                    )
            lost = [call_id for call_id in lost if call_id not in deferred]
            trimmed = [call_id for call_id in trimmed if call_id not in deferred]
            self._metrics.deferred.set(len(self._deferred))
            for call_id in lost:
                self._lose(call_id, outage=outage)
            for call_id in trimmed:
                self._calls[call_id].trimmed = True
                log.warning(
                    "worker %s: call %s's `started` entry is gone from %s (older than "
                    "CS_CALLS_RETENTION_S, or Redis lost its data): it is served here to its "
                    "end but can no longer fail over",
                    self._kind,
                    call_id,
                    self._keys.calls,
                )
        calls = [c for c in self._calls.values() if not c.finishing]
        claim: list[StreamIdT] = [c.entry_id for c in calls if not c.trimmed]
        claim += [entry_id for entry_id, _ in self._deferred.values()]
        if claim:
            await self._redis.xclaim(
                self._keys.calls, self._group, self.consumer, 0, claim, justid=True
            )
        # A call being rewound keeps its claim, but its position in memory may be ahead of
        # output an outage lost: its last saved checkpoint stands, and its audio stays.
        serving = [c for c in calls if not c.outage]
        for call in serving:
            self._save_checkpoint(call)
        await self._throttle(serving)
        await self._check_liveness(serving)
        if self._inputs.audio:
            await self._trim(serving, finished=False)
        self._outage = False

    async def _throttle(self, calls: Sequence[_Call]) -> None:
        """Back-pressure from playback: a call whose out stream holds more than half of
        CS_OUT_STREAM_MAXLEN entries (egress reads only what it can buffer, so the rest waits
        there; past MAXLEN the oldest would be dropped) is not read until it is down to a
        quarter: its handler gets no input meanwhile, and so makes no more audio. A call that
        is over (nobody will play its audio any more) is read again, to its end."""
        assert self._redis is not None
        playing = [
            c for c in calls if c.audio_out is not None and c.audio_out.played and not c.unplayed
        ]
        if not playing:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in playing:
                assert call.audio_out is not None
                pipe.xlen(call.audio_out.key)
                if call.throttled:  # is it over? (only a throttled call can miss its end)
                    pipe.xrevrange(call.input.in_key, count=1)
            replies = iter(await pipe.execute())
        high = self._settings.out_stream_maxlen // 2
        low = self._settings.out_stream_maxlen // 4
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        for call in playing:
            length = next(replies)
            if call.throttled:
                last = cast(StreamEntries, next(replies))
                if is_over(last[0] if last else None, now_ms, self._settings.call_idle_timeout_s):
                    call.unplayed = True
                    length = 0
            if not call.throttled and length > high:
                call.throttled = True
                self._metrics.throttled.inc()
                log.warning(
                    "worker %s: call %s has %d entries of audio waiting to be played (more than "
                    "half of CS_OUT_STREAM_MAXLEN); not reading it until they are down to %d",
                    self._kind,
                    call.call_id,
                    length,
                    low,
                )
            elif call.throttled and length <= low:
                call.throttled = False
                self._readable.set()
            if call.throttled:
                call.heard_at = now  # held back by us, not gone quiet
        self._metrics.throttled_now.set(sum(1 for c in self._calls.values() if c.throttled))

    def _lose(self, call_id: str, *, outage: bool = False) -> None:
        """Our heartbeat came too late and another replica took the call over: it resumes from
        our last checkpoint, so we stop rather than claim it back. When an outage kept us from
        Redis (``outage``), the takeover is a hand-back, not a failed attempt."""
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        log.warning(
            "worker %s: call %s was taken over by another replica%s",
            self._kind,
            call_id,
            " (Redis was unreachable from here)" if outage else "",
        )
        if outage:
            assert self._writer is not None
            key = self._keys.checkpoint(self._kind, call_id)
            self._writer.add("", "HINCRBY", key, F_HANDBACKS, 1)
        self._metrics.lost.inc()
        if call.task is not None:
            call.task.cancel()
        self._drop(call)

    def _snapshot(self, call: _Call) -> tuple[str, str, str]:
        """The call's checkpoint: read positions and the handler's state, taken between two
        batches so they agree. During a batch: the last one taken, and a new one is taken
        when the batch is done (a busy call is busy at nearly every heartbeat)."""
        if call.busy and call.snapshot is not None:
            call.want_snapshot = True
            return call.snapshot
        if not call.changed and call.snapshot is not None:
            return call.snapshot  # nothing handled since: no need to serialise the state again
        return self._take_snapshot(call)

    def _take_snapshot(self, call: _Call) -> tuple[str, str, str]:
        call.want_snapshot = False
        call.changed = False
        needed = None
        handler: object = call.handler
        if isinstance(handler, ResumePoint):
            needed = handler.resume_from()
        state = json.dumps(call.ctx.state, separators=(",", ":")) if call.ctx.state else EMPTY_STATE
        call.snapshot = (resume_point(call.processed_in, needed), call.processed_events, state)
        return call.snapshot

    def _save_checkpoint(self, call: _Call) -> None:
        assert self._writer is not None
        snapshot = self._snapshot(call)
        now = time.monotonic()
        if snapshot is call.saved and now - call.saved_at < self._settings.call_ttl_s / 4:
            return  # written already (its TTL is refreshed now and then)
        call.saved, call.saved_at = snapshot, now
        in_id, events_id, state = snapshot
        key = self._keys.checkpoint(self._kind, call.call_id)
        fields = checkpoint_fields(in_id, events_id, state, self.consumer)
        args: list[bytes | str] = []
        for name, value in fields.items():
            args.extend((name, value))
        self._writer.add(call.call_id, "HSET", key, *args)
        self._writer.add(call.call_id, "EXPIRE", key, self._settings.call_ttl_s)

    async def _check_liveness(self, calls: Sequence[_Call]) -> None:
        """End calls whose input will not end by itself: a call streams 50 frames a second
        until the gateway's end marker, so nothing for CS_CALL_IDLE_TIMEOUT_S means the
        gateway is gone; a call whose awaited `*.done` never follows `call.ended` (that kind
        is not deployed) is ended that long after `call.ended`."""
        assert self._redis is not None
        now = time.monotonic()
        timeout_s = self._settings.call_idle_timeout_s
        watch = [c for c in calls if not self._inputs.audio and not c.busy]
        if watch:
            # Kinds that do not read audio look at the inbound stream's last entry instead.
            async with self._redis.pipeline(transaction=False) as pipe:
                for call in watch:
                    pipe.xrevrange(call.input.in_key, count=1)
                lasts = await pipe.execute()
            for call, last in zip(watch, lasts, strict=True):
                last_id = cast(StreamEntries, last)[0][0].decode() if last else None
                if last_id != call.in_last:
                    call.in_last = last_id
                    call.heard_at = now
        for call in calls:
            if call.busy or call.input.complete:
                continue
            if now - call.heard_at > timeout_s:
                reason = IDLE_END_REASON
                log.warning(
                    "call %s: no inbound entry for %g s (CS_CALL_IDLE_TIMEOUT_S); ending it",
                    call.call_id,
                    timeout_s,
                )
            elif call.ended_at is not None and now - call.ended_at > timeout_s:
                reason = UNTIL_MISSING_REASON
                log.warning(
                    "call %s: ended %g s ago without %s; ending it",
                    call.call_id,
                    timeout_s,
                    " or ".join(sorted(self._inputs.until)),
                )
            else:
                continue
            items = call.input.end_input(reason)
            call.batch = Batch(items, None, None, [])
            call.busy = True
            call.wake.set()

    def _expire_call_keys(self, call_id: str) -> None:
        """The gateway that would have set the call's TTL is gone: set it (unless it is set),
        or the call's streams would stay for ever."""
        assert self._writer is not None
        for key in self._keys.call_keys(call_id):
            self._writer.add("", "EXPIRE", key, self._settings.call_ttl_s, "NX")

    async def _trim(self, calls: Sequence[_Call], *, finished: bool) -> None:
        """Trim each call's inbound audio that every audio-reading kind has checkpointed past
        (plus the replay margin); delete it once every one of them is done with the call."""
        assert self._redis is not None
        assert self._writer is not None
        if not calls:
            return
        others = [kind for kind in await self._audio_reading_kinds() if kind != self._kind]
        theirs: list[list[Checkpoint]] = [[] for _ in calls]
        if others:
            async with self._redis.pipeline(transaction=False) as pipe:
                for call in calls:
                    for kind in others:
                        pipe.hmget(self._keys.checkpoint(kind, call.call_id), [F_IN, F_DONE])
                replies = await pipe.execute()
            at = 0
            for index in range(len(calls)):
                for _ in others:
                    in_id, done = replies[at]
                    at += 1
                    theirs[index].append(
                        Checkpoint.parse({F_IN: in_id, F_DONE: done or b""})
                        if in_id
                        else Checkpoint()
                    )
        margin_ms = int(self._settings.audio_replay_margin_s * 1000)
        for call, their in zip(calls, theirs, strict=True):
            mine = (
                Checkpoint(done=True, exists=True)
                if finished
                else Checkpoint(in_id=self._snapshot(call)[0], exists=True)
            )
            trim = audio_trim_id([mine, *their], margin_ms)
            if trim == ALL:
                self._writer.add("", "DEL", call.input.in_key)
            elif trim is not None:
                self._writer.add("", "XTRIM", call.input.in_key, "MINID", "~", trim)

    async def _audio_reading_kinds(self) -> list[str]:
        """The kinds whose consumer groups exist on cs:calls and that read audio (a group of
        a kind not in the kinds hash, from an older version, counts as reading audio)."""
        assert self._redis is not None
        async with self._kinds_lock:
            if time.monotonic() - self._kinds_read_at >= KINDS_REFRESH_S:
                self._audio_kinds = await self._read_audio_kinds()
                self._kinds_read_at = time.monotonic()
        return self._audio_kinds

    async def _read_audio_kinds(self) -> list[str]:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.kinds)
            pipe.xinfo_groups(self._keys.calls)
            registered, groups = await pipe.execute()
        prefix = self._keys.group("")
        kinds: list[str] = []
        for group in groups:
            name = group["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            if not name.startswith(prefix):
                continue
            kind = name[len(prefix) :]
            inputs = registered.get(kind.encode())
            try:
                reads_audio = bool(json.loads(inputs)["audio"]) if inputs else True
            except (ValueError, KeyError, TypeError):
                reads_audio = True
            if reads_audio:
                kinds.append(kind)
        return kinds

    async def _pending_ids(self) -> set[str]:
        """Ids of the `started` entries this consumer holds in the group's pending list."""
        assert self._redis is not None
        rows = await self._redis.xpending_range(
            self._keys.calls,
            self._group,
            min="-",
            max="+",
            count=max(1000, 4 * self._max_calls + len(self._deferred)),
            consumername=self.consumer,
        )
        return {
            row["message_id"].decode()
            if isinstance(row["message_id"], bytes)
            else str(row["message_id"])
            for row in rows
        }

    # ------------------------------------------------------------------ hand-back

    async def _hand_back(self, owned: Sequence[_Call]) -> None:
        """Save the owned calls' checkpoints and mark every entry this consumer holds (also
        one delivered while it was stopping) as long idle, for another replica to take."""
        assert self._redis is not None
        assert self._writer is not None
        try:
            held: list[StreamIdT] = [
                *sorted(await self._pending_ids() | {c.entry_id for c in owned if not c.finishing})
            ]
            for call in owned:
                if call.finishing:
                    continue
                if not call.outage:  # a call being rewound: its last saved checkpoint stands
                    self._save_checkpoint(call)
                # The next owner's claim counts as a delivery; a hand-back is no failure.
                key = self._keys.checkpoint(self._kind, call.call_id)
                self._writer.add("", "HINCRBY", key, F_HANDBACKS, 1)
            for call_id in self._deferred:  # backlog never served here: no attempt either
                key = self._keys.checkpoint(self._kind, call_id)
                self._writer.add("", "HINCRBY", key, F_HANDBACKS, 1)
                self._writer.add("", "EXPIRE", key, self._settings.call_ttl_s)
            await self._writer.drain()  # checkpoints first: then the entries may go
            if held:
                await self._redis.xclaim(
                    self._keys.calls,
                    self._group,
                    self.consumer,
                    0,
                    held,
                    idle=HANDBACK_IDLE_MS,
                    justid=True,
                )
                log.info("worker %s: handed back %d calls", self._kind, len(held))
        except (RedisError, OSError) as exc:
            log.warning(
                "worker %s: could not hand back %d calls (%s); they will be taken over "
                "after their idle timeout",
                self._kind,
                len(owned),
                exc,
            )
