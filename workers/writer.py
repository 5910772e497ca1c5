"""One replica's writes to Redis: every call's commands, in order, in pipelined batches.

Handlers' ports and the runtime queue commands without waiting (:meth:`Writer.add`); what was
queued during one turn of the event loop goes to Redis as one pipeline at the next, on one
connection at a time, so a call's audio, events and checkpoints keep their order (a checkpoint
is never written before the output it covers). While a batch is in flight the next one fills
up. A command Redis refuses, or a batch whose connection fails, is reported per call to
``on_failure`` (the runtime fails those calls: they are retried from their checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

OnFailure = Callable[[str, str], None]
Args = tuple[bytes | str | int | float, ...]

MAX_BATCH = 2000  # commands per pipeline


class Writer:
    """Batches commands of every call of a replica into pipelines."""

    def __init__(self, redis: aioredis.Redis, on_failure: OnFailure) -> None:
        self._redis = redis
        self._on_failure = on_failure
        self._commands: list[Args] = []
        self._calls: list[str] = []  # one per command; "" for the runtime's own
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    async def __aenter__(self) -> Writer:
        self._task = asyncio.create_task(self._run(), name="worker-writer")
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
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def add(self, call_id: str, *args: bytes | str | int | float) -> None:
        """Queue one command (``args`` as for ``execute_command``)."""
        self._commands.append(args)
        self._calls.append(call_id)
        self._idle.clear()
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._commands)

    async def drain(self) -> None:
        """Until everything queued so far has been written (or failed)."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._commands:
                commands, calls = self._commands[:MAX_BATCH], self._calls[:MAX_BATCH]
                del self._commands[:MAX_BATCH], self._calls[:MAX_BATCH]
                await self._write(commands, calls)
            if not self._commands:
                self._idle.set()

    async def _write(self, commands: list[Args], calls: list[str]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for args in commands:
                    pipe.execute_command(*args)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self.failures += 1
            error = str(exc) or type(exc).__name__
            log.warning("worker: writing %d commands failed: %s", len(commands), error)
            for call_id in dict.fromkeys(calls):
                if call_id:
                    self._on_failure(call_id, error)
            return
        failed: dict[str, str] = {}
        for call_id, result in zip(calls, results, strict=True):
            if isinstance(result, Exception) and call_id not in failed:
                failed[call_id] = str(result)
        if failed:
            self.failures += 1
            log.warning(
                "worker: Redis refused commands of %d calls (%s)",
                len(failed),
                next(iter(failed.values())),
            )
            for call_id, error in failed.items():
                if call_id:
                    self._on_failure(call_id, error)
