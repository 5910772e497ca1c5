"""Batched publishing of stream entries from every call of a gateway process.

Connections append entries without waiting. A publisher thread, with its own Redis connection,
sends what is buffered as one pipelined round trip as soon as its previous one has finished
(natural batching: the busier the process, the bigger the batches), optionally lingering
``flush_interval_s`` to batch more. Entries keep their order: one thread, one connection, one
flush at a time, in buffer order.

Why a thread: the event loop that serves hundreds of call sockets turns only every several
milliseconds under load, and a flush that waited on Redis inside it paid a full turn for every
wait (see docs/performance.md). The thread blocks on its socket (releasing the GIL) and reports
each flush back to the loop with ``call_soon_threadsafe``. A connection learns that its entries
could not be published through ``on_failure(call_id, error)``, called on the loop once per call
per flush.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from types import TracebackType
from typing import cast

import hiredis

from ingress.metrics import IngressMetrics
from ingress.redis_client import PipelineSocket
from shared.entries import Fields

log = logging.getLogger(__name__)

OnFailure = Callable[[str, str], None]

LATENCY_SAMPLE_EVERY = 4  # ingest latency is observed for one frame in four (it costs ~1 us)
FLUSH_TIMEOUT_S = 5.0  # a flush Redis has not answered by then fails (and its calls close)
MAX_BATCH = 2000  # entries per flush


@dataclass(slots=True)
class _Op:
    call_id: str
    key: str
    fields: Fields | None  # None: an EXPIRE of `key` by `arg` seconds
    arg: int  # MAXLEN (approximate) for XADD, seconds for EXPIRE
    received_at: float  # time.monotonic() the frame came off the socket; 0.0 if not a frame


class Publisher:
    """Buffers XADDs (and EXPIREs) and flushes them in pipelined batches from a thread."""

    def __init__(
        self,
        redis_url: str,
        metrics: IngressMetrics,
        on_failure: OnFailure,
        *,
        flush_interval_s: float = 0.0,
    ) -> None:
        self._socket = PipelineSocket(redis_url, timeout_s=FLUSH_TIMEOUT_S)
        self._metrics = metrics
        self._on_failure = on_failure
        self._linger_s = flush_interval_s
        self._pending: deque[_Op] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    async def __aenter__(self) -> Publisher:
        self._thread.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush what is buffered (each flush bounded by FLUSH_TIMEOUT_S), then stop."""
        await self.drain()
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join)
        self._socket.close()
        await asyncio.sleep(0)  # run the completions the thread scheduled last

    async def drain(self) -> None:
        """Wait until everything buffered so far has been flushed (or failed)."""
        while self._pending or not self._idle.is_set():
            if not self._thread.is_alive():
                log.error("publisher: thread is gone; %d entries not published", len(self._pending))
                break
            self._wake.set()
            await asyncio.to_thread(self._idle.wait, 0.1)
        await asyncio.sleep(0)

    def xadd(
        self, call_id: str, key: str, fields: Fields, maxlen: int, received_at: float = 0.0
    ) -> None:
        """Queue an XADD; ``received_at`` (monotonic) marks a frame for the latency metric."""
        self._pending.append(_Op(call_id, key, fields, maxlen, received_at))
        if not self._wake.is_set():
            self._wake.set()

    def expire(self, call_id: str, key: str, seconds: int) -> None:
        self._pending.append(_Op(call_id, key, None, seconds, 0.0))
        if not self._wake.is_set():
            self._wake.set()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait()
            self._wake.clear()
            if not pending:
                if self._stopping:
                    return
                continue
            self._idle.clear()
            if self._linger_s > 0:
                time.sleep(self._linger_s)
            while pending:
                batch = [pending.popleft() for _ in range(min(len(pending), MAX_BATCH))]
                try:
                    results = self._execute(batch)
                except Exception as exc:  # a bug, not Redis: fail these calls, keep publishing
                    log.exception("publisher: flush of %d entries failed", len(batch))
                    results = [exc] * len(batch)
                self._loop.call_soon_threadsafe(self._completed, batch, results, time.monotonic())
            self._idle.set()

    def _execute(self, batch: list[_Op]) -> list[object]:
        """Send the batch as one pipelined write and read one reply per command.

        Each command is packed by hiredis straight from its arguments, and the replies are
        parsed in bulk by hiredis (:class:`~ingress.redis_client.PipelineSocket`).
        """
        pack = _PACK  # hiredis (C); called directly: a wrapper cost more than the packing
        packed = b"".join(
            pack(
                (
                    "XADD",
                    op.key,
                    "MAXLEN",
                    "~",
                    op.arg,
                    "*",
                    *chain.from_iterable(op.fields.items()),
                )
            )
            if op.fields is not None
            else pack(("EXPIRE", op.key, op.arg))
            for op in batch
        )
        try:
            return self._socket.execute(packed, len(batch))
        except ConnectionError as exc:
            # A connection that died with the server it spoke to (a restart) fails at once:
            # try once more on a fresh one. (Had Redis executed commands whose replies were
            # lost, the retry would repeat them: entries carry `seq`.)
            log.warning("publisher: %s; retrying the flush on a new connection", exc)
        except OSError as exc:  # timed out, unreachable, ...
            return [exc] * len(batch)
        try:
            return self._socket.execute(packed, len(batch))
        except OSError as exc:
            return [exc] * len(batch)

    # ------------------------------------------------------------------ back on the loop

    def _completed(self, batch: list[_Op], results: list[object], done_at: float) -> None:
        metrics = self._metrics
        metrics.batch.observe(len(batch))
        failed: dict[str, str] = {}
        ok = frames = 0
        observe = metrics.latency.observe
        for op, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):  # hiredis.ReplyError, or the flush's failure
                failed.setdefault(op.call_id, str(result) or type(result).__name__)
                continue
            ok += 1
            if op.received_at:
                frames += 1
                if frames % LATENCY_SAMPLE_EVERY == 1:
                    observe(done_at - op.received_at)
        metrics.published.inc(ok)
        metrics.frames.inc(frames)
        if failed:
            metrics.publish_errors.inc(len(batch) - ok)
            first_call, first_error = next(iter(failed.items()))
            log.error(
                "could not publish %d entries of %d calls to Redis (call %s: %s)",
                len(batch) - ok,
                len(failed),
                first_call,
                first_error,
            )
            for call_id, error in failed.items():
                self._on_failure(call_id, error)


_PACK = cast(Callable[[tuple[object, ...]], bytes], hiredis.pack_command)
