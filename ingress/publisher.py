"""Batched publishing of stream entries from every call of a gateway process.

Connections append entries without waiting; one flusher sends everything buffered as a single
pipelined round trip as soon as the previous one has finished (natural batching: the busier the
process, the bigger the batches), optionally lingering ``flush_interval_s`` to batch more. Entries
keep their order: one flush at a time, in buffer order. A connection learns that its entries
could not be published through ``on_failure(call_id, error)``, called once per call per flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from types import TracebackType
from typing import cast

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from ingress.metrics import IngressMetrics
from shared.entries import Fields

log = logging.getLogger(__name__)

OnFailure = Callable[[str, str], None]

LATENCY_SAMPLE_EVERY = 4  # ingest latency is observed for one frame in four (it costs ~1 us)
FLUSH_TIMEOUT_S = 5.0  # a flush Redis has not answered by then fails (and its calls close)


@dataclass(slots=True)
class _Op:
    call_id: str
    key: str
    fields: Fields | None  # None: an EXPIRE of `key` by `arg` seconds
    arg: int  # MAXLEN (approximate) for XADD, seconds for EXPIRE
    received_at: float  # loop time the frame came off the socket; 0.0 when not a frame


class Publisher:
    """Buffers XADDs (and EXPIREs) and flushes them in pipelined batches."""

    def __init__(
        self,
        redis: aioredis.Redis,
        metrics: IngressMetrics,
        on_failure: OnFailure,
        *,
        flush_interval_s: float = 0.0,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._on_failure = on_failure
        self._linger_s = flush_interval_s
        self._buffer: list[_Op] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._loop_time = asyncio.get_running_loop().time

    async def __aenter__(self) -> Publisher:
        self._task = asyncio.create_task(self._flush_loop(), name="publisher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush what is buffered (bounded by the Redis client's timeouts), then stop."""
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def drain(self) -> None:
        """Wait until everything buffered so far has been flushed (or failed)."""
        while self._buffer or not self._idle.is_set():
            self._wake.set()
            await self._idle.wait()
            if self._buffer:
                await asyncio.sleep(0)

    def xadd(
        self, call_id: str, key: str, fields: Fields, maxlen: int, received_at: float = 0.0
    ) -> None:
        """Queue an XADD; ``received_at`` (loop time) marks a frame for the latency metric."""
        self._buffer.append(_Op(call_id, key, fields, maxlen, received_at))
        self._wake.set()

    def expire(self, call_id: str, key: str, seconds: int) -> None:
        self._buffer.append(_Op(call_id, key, None, seconds, 0.0))
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._buffer:
                continue
            self._idle.clear()
            try:
                if self._linger_s > 0:
                    await asyncio.sleep(self._linger_s)
                else:
                    await asyncio.sleep(0)  # let every ready connection add its frames
                batch, self._buffer = self._buffer, []
                try:
                    await self._flush(batch)
                except Exception as exc:  # a bug, not Redis: fail these calls, keep publishing
                    log.exception("publisher: flush of %d entries failed", len(batch))
                    self._metrics.publish_errors.inc(len(batch))
                    for call_id in {op.call_id for op in batch}:
                        self._on_failure(call_id, f"internal error: {exc}")
            finally:
                if not self._buffer:
                    self._idle.set()
                else:
                    self._wake.set()

    async def _flush(self, batch: list[_Op]) -> None:
        metrics = self._metrics
        results = await self._execute(batch)
        now = self._loop_time()
        metrics.batch.observe(len(batch))
        failed: dict[str, str] = {}
        ok = frames = 0
        observe = metrics.latency.observe
        for op, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                failed.setdefault(op.call_id, str(result) or type(result).__name__)
                continue
            ok += 1
            if op.received_at:
                frames += 1
                if frames % LATENCY_SAMPLE_EVERY == 1:
                    observe(now - op.received_at)
        metrics.published.inc(ok)
        metrics.frames.inc(frames)
        if failed:
            metrics.publish_errors.inc(len(batch) - ok)
            for call_id, error in failed.items():
                log.error("call %s: could not publish to Redis: %s", call_id, error)
                self._on_failure(call_id, error)

    async def _execute(self, batch: list[_Op]) -> list[object]:
        """Send the batch as one pipelined write and read one reply per command.

        redis-py's Pipeline spends more time per command (argument handling, callbacks, a
        coroutine chain per reply) than parsing the JSON frame did; here each command is
        packed by hiredis straight from its arguments, on a connection of redis-py's pool (which
        keeps handling AUTH, TLS and reconnects), and the replies are read back in order.
        """
        packed = b"".join(
            _pack(
                "XADD", op.key, "MAXLEN", "~", op.arg, "*", *chain.from_iterable(op.fields.items())
            )
            if op.fields is not None
            else _pack("EXPIRE", op.key, op.arg)
            for op in batch
        )
        pool = self._redis.connection_pool
        results: list[object] = []
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                    try:
                        await connection.send_packed_command(packed, check_health=False)
                        read = connection.read_response
                        for _ in batch:
                            try:
                                results.append(await read(disable_decoding=True))
                            except ResponseError as exc:  # this command failed; the rest go on
                                results.append(exc)
                    except BaseException:
                        await connection.disconnect(nowait=True)
                        raise
                    finally:
                        await pool.release(connection)
            except (RedisConnectionError, OSError) as exc:
                # A pooled connection that died with the server it spoke to fails before any
                # reply: try once more on a fresh connection. (Had Redis executed commands
                # whose replies were lost, the retry would repeat them: entries carry `seq`.)
                if attempt == 1 and not results:
                    log.warning("publisher: %s; retrying the flush on a new connection", exc)
                    continue
                results += [exc] * (len(batch) - len(results))
            except (RedisError, TimeoutError) as exc:
                results += [exc] * (len(batch) - len(results))
            break
        return results


def _pack(*args: object) -> bytes:
    """One command in the Redis protocol, packed by hiredis (C)."""
    packed: bytes = hiredis.pack_command(cast(tuple[str | int | float | bytes], args))
    return packed
