"""Batched publishing of stream entries from every call of a process (the gateway's frames, a
worker replica's outputs and checkpoints: :mod:`callstream.workers.writer`).

Connections hand over packed commands without waiting. Everything handed over during one turn
of the event loop is written to Redis as one pipeline at the start of the next turn (or after
``flush_interval_s``, to batch more), on one connection, so every call's entries keep their
order. Replies are read by an :class:`asyncio.Protocol`: ``data_received`` feeds hiredis's
reader and matches the replies to their batches in order. Nothing on this path awaits: a flush
is one ``transport.write`` and a reply is one callback, so a busy event loop costs a batch at
most a turn or two, and there is no second thread to share the GIL with (see
docs/performance.md for the versions this replaced and why).

A connection learns that its entries could not be published through ``on_failure(call_id,
error, bus_wide)``, called once per call per failed batch. A batch whose connection is lost is
sent once more on a new connection (a Redis restart); when Redis has answered nothing for
``FLUSH_TIMEOUT_S`` while owing replies, everything in flight fails, and so do entries handed
over while Redis cannot be reached. Failures that concern every call, not one call's keys (Redis
unreachable or silent, the connection's AUTH refused, or error replies such as ``OOM``,
``MISCONF`` or ``READONLY``: see :func:`refuses_every_call`), have ``bus_wide`` set (a worker
then retries the call rather than count it failed) and are also reported once per batch
through ``on_bus_failure(reason)``, so the gateway stops taking calls.

``REDIS_URL`` means what it means to redis-py (:mod:`callstream.bus.url`): TCP, TLS or a unix
socket, ACL user and password, database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain
from types import TracebackType
from typing import Protocol, cast

import hiredis
from prometheus_client import Counter, Histogram

from callstream.bus.url import RedisTarget, parse_redis_url
from callstream.shared.entries import Fields

log = logging.getLogger(__name__)

OnFailure = Callable[[str, str, bool], None]  # (call id, error, bus-wide)
OnBusFailure = Callable[[str], None]

LATENCY_SAMPLE_EVERY = 4  # ingest latency is observed for one frame in four (it costs ~1 us)
FLUSH_TIMEOUT_S = 5.0  # Redis answering nothing this long fails what is in flight (calls close)
CONNECT_TIMEOUT_S = 2.0
RETRY_CONNECT_AFTER_S = 0.5  # after a failed connect, entries fail at once for this long
WATCHDOG_PERIOD_S = 0.5
PUBLISHER_CLIENT_NAME = "callstream-gateway-publisher"  # the gateway's; a worker names its own
MAX_BATCH = 1000  # entries per write: bounded memory and a cache-sized working set
WRITE_CHUNK = 256 * 1024  # bytes per transport.write while the socket keeps up

_PACK = cast(Callable[[tuple[object, ...]], bytes], hiredis.pack_command)
_ReplyError = hiredis.ReplyError  # how the reader returns an error reply (not raised)

# Error replies that say Redis takes no write from this client at all, whatever the key: out of
# memory (noeviction), RDB saves failing (stop-writes-on-bgsave-error), a read-only replica,
# too few replicas, loading, a busy script, authentication or ACL. Others (WRONGTYPE, ...) are
# about one call's keys.
BUS_WIDE_ERRORS = frozenset(
    {
        "OOM",
        "MISCONF",
        "READONLY",
        "NOREPLICAS",
        "MASTERDOWN",
        "LOADING",
        "BUSY",
        "NOAUTH",
        "NOPERM",
        "WRONGPASS",
        "CLUSTERDOWN",
    }
)


class PublisherMetrics(Protocol):
    """What the publisher counts (the gateway's IngressMetrics, a worker's WriterMetrics)."""

    batch: Histogram  # commands per write
    latency: Histogram  # a marked command (``received_at``) handed over → acknowledged
    published: Counter  # commands Redis acknowledged
    frames: Counter  # marked commands Redis acknowledged
    publish_errors: Counter  # commands Redis did not accept


def refuses_every_call(error: str) -> bool:
    """Whether an error reply from Redis concerns every call (see BUS_WIDE_ERRORS)."""
    return error.split(" ", 1)[0] in BUS_WIDE_ERRORS


@dataclass(slots=True)
class _Batch:
    commands: list[bytes]
    call_ids: list[str]  # one per command; "" for the connection's own setup commands
    received_at: list[float]  # one per command: monotonic receive time of a frame, else 0.0
    results: list[object] = field(default_factory=list)
    retried: bool = False


class _Protocol(asyncio.Protocol):
    """The publisher's Redis connection: chunked writes, replies parsed by hiredis."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self._out: deque[memoryview] = deque()
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Paused as soon as the kernel does not take a whole write, resumed once the
        # transport's buffer is empty again: see write(). Not high=0: asyncio's TLS transport
        # pauses at "buffered >= high", so 0 would pause it at every read with nothing
        # buffered, and a batch written after an even number of reads would wait forever.
        self.transport.set_write_buffer_limits(high=1, low=0)

    def write(self, data: bytes) -> None:
        """Queue ``data`` and write it in chunks the socket takes as they come.

        One large ``transport.write`` would leave most of a big batch in the transport's
        buffer, which Python 3.11 drains by deleting sent bytes from the front of a bytearray
        (a copy of the remainder on every send): quadratic in the batch size.
        """
        self._out.append(memoryview(data))
        if not self._paused:
            self._pump()

    def _pump(self) -> None:
        out, transport = self._out, self.transport
        assert transport is not None
        while out and not self._paused:
            view = out[0]
            if len(view) <= WRITE_CHUNK:
                out.popleft()
                transport.write(view)
            else:
                out[0] = view[WRITE_CHUNK:]
                transport.write(view[:WRITE_CHUNK])

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        replies = []
        while (reply := reader.gets()) is not False:
            replies.append(reply)
        if replies:
            self._publisher._replies(self, replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._publisher._lost(self, exc)


class Publisher:
    """Buffers packed commands and writes them to Redis in pipelined batches."""

    def __init__(
        self,
        redis: str | RedisTarget,
        metrics: PublisherMetrics,
        on_failure: OnFailure,
        *,
        on_bus_failure: OnBusFailure | None = None,
        flush_interval_s: float = 0.0,
        client_name: str = PUBLISHER_CLIENT_NAME,
    ) -> None:
        """``redis``: a ``REDIS_URL`` or its parsed target (ConfigError when redis-py would
        not accept it, or its TLS files cannot be loaded)."""
        target = (
            parse_redis_url(redis, connect_timeout_s=CONNECT_TIMEOUT_S)
            if isinstance(redis, str)
            else redis
        )
        self._target = target
        self._ssl = target.ssl_context()
        self._setup = [_PACK(command) for command in target.setup_commands(client_name)]
        self._metrics = metrics
        self._on_failure = on_failure
        self._on_bus_failure = on_bus_failure
        self._linger_s = flush_interval_s
        self._loop = asyncio.get_running_loop()
        # What was handed over since the last flush, in parallel lists (cheaper than objects).
        self._commands: list[bytes] = []
        self._call_ids: list[str] = []
        self._received_at: list[float] = []
        self._inflight: deque[_Batch] = deque()
        self._retry: list[_Batch] = []  # batches to send again on the next connection
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._progress_at = 0.0  # the last reply, or the first send after none was owed
        self._flush_handle: asyncio.Handle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False
        self._sample_offset = 0  # where the latency sampling continues in the next batch
        self.backlog_bytes = 0  # handed over and not yet answered (or failed)

    async def __aenter__(self) -> Publisher:
        self._watchdog = asyncio.create_task(self._watch(), name="publisher-watchdog")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Publish what was handed over, then stop (bounded: what Redis leaves unanswered for
        FLUSH_TIMEOUT_S fails)."""
        await self.drain()
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    async def drain(self) -> None:
        """Wait until everything handed over so far has been published (or has failed)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        await self._idle.wait()

    # ------------------------------------------------------------------ handing over

    def publish(self, call_id: str, command: bytes, received_at: float = 0.0) -> None:
        """Queue one packed command; ``received_at`` (monotonic) marks a frame for the latency
        metric."""
        commands = self._commands
        commands.append(command)
        self.backlog_bytes += len(command)
        self._call_ids.append(call_id)
        self._received_at.append(received_at)
        if len(commands) >= MAX_BATCH:
            # A busy turn of the loop hands over thousands of entries: sending them in batches
            # of MAX_BATCH as they come keeps the data in the CPU's caches (and Redis busy).
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()
        elif self._flush_handle is None:
            self._idle.clear()
            if self._linger_s > 0:
                self._flush_handle = self._loop.call_later(self._linger_s, self._flush)
            else:
                self._flush_handle = self._loop.call_soon(self._flush)

    def xadd(self, call_id: str, key: str, fields: Fields, maxlen: int | None) -> None:
        """Queue ``XADD key MAXLEN ~ maxlen * fields…`` (no MAXLEN when None: the stream is
        trimmed elsewhere)."""
        trim = ("MAXLEN", "~", maxlen) if maxlen is not None else ()
        self.publish(call_id, _PACK(("XADD", key, *trim, "*", *chain(*fields.items()))))

    def xadd_retained(self, call_id: str, key: str, fields: Fields, min_id_ms: int) -> None:
        """Queue ``XADD key MINID min_id_ms * fields…``: entries older than ``min_id_ms``
        (epoch ms) go, however many are younger."""
        self.publish(
            call_id, _PACK(("XADD", key, "MINID", min_id_ms, "*", *chain(*fields.items())))
        )

    def expire(self, call_id: str, key: str, seconds: int) -> None:
        self.publish(call_id, _PACK(("EXPIRE", key, seconds)))

    # ------------------------------------------------------------------ writing

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._commands:
            self._check_idle()
            return
        batch = _Batch(self._commands, self._call_ids, self._received_at)
        self._commands, self._call_ids, self._received_at = [], [], []
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            self._retry.append(batch)  # sent by the connection being made, or failed
            self._ensure_connecting()
            return
        self._send(protocol, batch)

    def _send(self, protocol: _Protocol, batch: _Batch) -> None:
        if not self._inflight:
            self._progress_at = time.monotonic()  # Redis owes us an answer from now on
        self._inflight.append(batch)
        protocol.write(b"".join(batch.commands))

    def _ensure_connecting(self) -> None:
        if self._connecting is not None or self._closed:
            return
        if time.monotonic() < self._down_until:
            self._fail_waiting("Redis is unreachable")
            return
        self._connecting = asyncio.create_task(self._connect(), name="publisher-connect")

    async def _connect(self) -> None:
        target = self._target
        try:
            async with asyncio.timeout(target.connect_timeout_s):
                if target.unix_path is not None:
                    _, protocol = await self._loop.create_unix_connection(
                        lambda: _Protocol(self), target.unix_path
                    )
                else:
                    _, protocol = await self._loop.create_connection(
                        lambda: _Protocol(self), target.host, target.port, ssl=self._ssl
                    )
        except (OSError, TimeoutError) as exc:
            self._connecting = None
            self._down_until = time.monotonic() + RETRY_CONNECT_AFTER_S
            self._fail_waiting(f"cannot connect to Redis: {exc or type(exc).__name__}")
            return
        self._connecting = None
        assert protocol.transport is not None
        self._protocol = protocol
        if self._setup:
            self._send(
                protocol,
                _Batch(self._setup, [""] * len(self._setup), [0.0] * len(self._setup)),
            )
        retry, self._retry = self._retry, []
        for batch in retry:
            batch.results = []
            self._send(protocol, batch)
        log.info("publisher: connected to Redis at %s", target.describe())

    # ------------------------------------------------------------------ replies

    def _replies(self, protocol: _Protocol, replies: list[object]) -> None:
        if protocol is not self._protocol:
            return
        inflight = self._inflight
        done_at = self._progress_at = time.monotonic()
        i = 0
        while i < len(replies) and inflight:
            batch = inflight[0]
            need = len(batch.commands) - len(batch.results)
            batch.results.extend(replies[i : i + need])
            i += need
            if len(batch.results) == len(batch.commands):
                inflight.popleft()
                self._release(batch)
                self._completed(batch, done_at)
                if protocol is not self._protocol:
                    break  # the setup was refused: what is in flight has failed with it
        self._check_idle()

    def _completed(self, batch: _Batch, done_at: float) -> None:
        if batch.call_ids[0] == "" and batch.commands is self._setup:
            errors = [r for r in batch.results if isinstance(r, hiredis.ReplyError)]
            if errors:
                log.error(
                    "publisher: Redis at %s refused the connection setup: %s",
                    self._target.describe(),
                    errors[0],
                )
                self._drop_connection(f"Redis refused the connection setup: {errors[0]}")
            return
        metrics = self._metrics
        count = len(batch.commands)
        metrics.batch.observe(count)
        received_at = batch.received_at
        frames = count - received_at.count(0.0)
        failed_at = [i for i, result in enumerate(batch.results) if result.__class__ is _ReplyError]
        if frames:
            # One frame in LATENCY_SAMPLE_EVERY, at C speed: slicing skips the others.
            observe = metrics.latency.observe
            for at in received_at[self._sample_offset :: LATENCY_SAMPLE_EVERY]:
                if at:
                    observe(done_at - at)
            self._sample_offset = (self._sample_offset - count) % LATENCY_SAMPLE_EVERY
        if not failed_at:
            metrics.published.inc(count)
            metrics.frames.inc(frames)
            return
        failed: dict[str, str] = {}
        bus_error = ""
        for i in failed_at:
            error = str(batch.results[i]) or "error"
            failed.setdefault(batch.call_ids[i], error)
            if not bus_error and refuses_every_call(error):
                bus_error = error
            if received_at[i]:
                frames -= 1
        metrics.published.inc(count - len(failed_at))
        metrics.frames.inc(frames)
        self._report(failed, len(failed_at), connection=False)
        if bus_error:
            self._bus_failed(f"writes refused: {bus_error}")

    def _bus_failed(self, error: str) -> None:
        if self._on_bus_failure is not None and not self._closed:
            self._on_bus_failure(error)

    def _report(self, failed: dict[str, str], count: int, *, connection: bool) -> None:
        """``connection``: the connection failed (Redis unreachable or silent), not a command."""
        self._metrics.publish_errors.inc(count)
        first_call, first_error = next(iter(failed.items()))
        log.error(
            "could not publish %d entries of %d calls to Redis (call %s: %s)",
            count,
            len(failed),
            first_call,
            first_error,
        )
        for call_id, error in failed.items():
            if call_id:
                self._on_failure(call_id, error, connection or refuses_every_call(error))

    def _release(self, batch: _Batch) -> None:
        if batch.commands is not self._setup:
            self.backlog_bytes -= sum(map(len, batch.commands))

    def _fail(self, batches: Iterable[_Batch], error: str) -> None:
        """Fail whole batches (Redis unreachable, silent or refusing the connection): one
        report for all of them."""
        calls: dict[str, str] = {}
        count = 0
        for batch in batches:
            if batch.commands is self._setup:
                continue
            self._release(batch)
            count += len(batch.commands)
            calls.update(dict.fromkeys(batch.call_ids, error))
        calls.pop("", None)
        if calls:
            self._report(calls, count, connection=True)
            self._bus_failed(error)

    def _fail_waiting(self, error: str) -> None:
        """Fail what waits for a connection: the batches to retry and what was handed over."""
        waiting, self._retry = self._retry, []
        if self._commands:
            waiting.append(_Batch(self._commands, self._call_ids, self._received_at))
            self._commands, self._call_ids, self._received_at = [], [], []
        self._fail(waiting, error)
        self._check_idle()

    # ------------------------------------------------------------------ connection failures

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        inflight, self._inflight = self._inflight, deque()
        if self._closed:
            self._fail(inflight, "the gateway is closing")
            self._check_idle()
            return
        reason = str(exc) if exc else "Redis closed the connection"
        log.warning("publisher: lost the Redis connection (%s)", reason)
        self._fail((batch for batch in inflight if batch.retried), reason)
        for batch in inflight:
            if batch.commands is self._setup or batch.retried:
                continue
            # The connection died with the server it spoke to (a restart): send once more on
            # a new one. (Had Redis executed commands whose replies were lost, the retry
            # repeats them: entries carry `seq`.)
            batch.retried = True
            self._retry.append(batch)
        if self._retry or self._commands:
            self._ensure_connecting()
        self._check_idle()

    def _drop_connection(self, error: str) -> None:
        """Fail every batch in flight and close the connection (the next flush reconnects)."""
        protocol, self._protocol = self._protocol, None
        inflight, self._inflight = self._inflight, deque()
        self._fail(inflight, error)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        self._check_idle()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            # Redis must keep answering, not answer everything within the timeout: when
            # the process is overloaded, batches queue up behind each other and take long,
            # but replies keep coming.
            if self._inflight and time.monotonic() - self._progress_at > FLUSH_TIMEOUT_S:
                log.error("publisher: Redis has not answered for %.0f s", FLUSH_TIMEOUT_S)
                self._drop_connection(f"Redis did not answer within {FLUSH_TIMEOUT_S:.0f} s")

    def _check_idle(self) -> None:
        if (
            not self._commands
            and not self._inflight
            and not self._retry
            and self._connecting is None
            and self._flush_handle is None
        ):
            self._idle.set()
