"""One replica's writes to Redis: every call's commands, in order, in pipelined batches.

Handlers' ports and the runtime queue commands without waiting (:meth:`Writer.add`); what was
queued during one turn of the event loop goes to Redis as one pipeline at the next, on one
connection, so a call's audio, events and checkpoints keep their order (a checkpoint is never
written before the output it covers). It is the gateway's publisher
(:class:`~callstream.bus.publisher.Publisher`: commands packed by hiredis, replies matched
by an asyncio protocol, nothing awaited on the way) with a worker's metrics: redis-py's
pipeline packed every command in Python, which cost the echo worker half its CPU
(docs/performance.md). A command Redis refuses, or a batch whose connection fails, is reported
per call to ``on_failure`` (the runtime fails those calls: they are retried from their
checkpoint); a refusal that concerns every call (Redis unreachable, OOM, …) also to
``on_bus_failure``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import cast

import hiredis
from prometheus_client import CollectorRegistry, Counter, Histogram

from callstream.bus.publisher import OnBusFailure, OnFailure, Publisher

Arg = bytes | str | int | float
_PACK = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


def pack(*args: Arg) -> bytes:
    """One command in RESP, as the writer sends it."""
    return _PACK(args)


class WriterMetrics:
    """The writer's figures, per kind."""

    def __init__(self, registry: CollectorRegistry, kind: str) -> None:
        self.batch = Histogram(
            "callstream_worker_write_batch_commands",
            "Commands per pipelined write",
            ["kind"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=registry,
        ).labels(kind)
        self.latency = Histogram(
            "callstream_worker_audio_write_seconds",
            "Audio a handler played -> acknowledged by Redis",
            ["kind"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        ).labels(kind)
        self.published = Counter(
            "callstream_worker_writes_total",
            "Commands Redis acknowledged (audio, events, checkpoints, acknowledgements)",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.frames = Counter(
            "callstream_worker_audio_writes_total",
            "Audio entries Redis acknowledged",
            ["kind"],
            registry=registry,
        ).labels(kind)
        self.publish_errors = Counter(
            "callstream_worker_write_errors_total",
            "Commands Redis did not accept",
            ["kind"],
            registry=registry,
        ).labels(kind)


class Writer:
    """Batches commands of every call of a replica into pipelines."""

    def __init__(
        self,
        redis_url: str,
        metrics: WriterMetrics,
        on_failure: OnFailure,
        *,
        on_bus_failure: OnBusFailure | None = None,
        client_name: str,
        flush_interval_s: float = 0.0,
    ) -> None:
        """``flush_interval_s``: how long the first command of a batch waits for more (as the
        gateway's ``CS_FLUSH_INTERVAL_MS``)."""
        self._publisher = Publisher(
            redis_url,
            metrics,
            on_failure,
            on_bus_failure=on_bus_failure,
            client_name=client_name,
            flush_interval_s=flush_interval_s,
        )

    async def __aenter__(self) -> Writer:
        await self._publisher.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write what was queued (bounded by Redis answering), then stop."""
        await self._publisher.aclose()

    def add(self, call_id: str, *args: Arg) -> None:
        """Queue one command (``args`` as for ``execute_command``); ``call_id`` is told if it
        fails ("" for the runtime's own)."""
        self._publisher.publish(call_id, _PACK(args))

    def add_packed(self, call_id: str, command: bytes, *, audio: bool = False) -> None:
        """Queue a command packed with :func:`pack`; ``audio`` counts it in the audio
        metrics."""
        self._publisher.publish(call_id, command, time.monotonic() if audio else 0.0)

    async def drain(self) -> None:
        """Until everything queued so far has been written (or failed)."""
        await self._publisher.drain()
