"""The echo worker: plays every non-silent inbound frame back into its call.

It is the end-to-end test of the pipeline and its latency probe. Frames go back in arrival
order, no earlier than ``delay_ms`` after the worker read them; a batch read together is written
with one pipelined round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from callstream.shared.entries import InEntry, InFrame, OutAudio, encode_out
from callstream.workers.base import CallContext, CallHandler, HandlerFactory

log = logging.getLogger(__name__)

MAX_QUEUED_FRAMES = 3000  # 60 s of audio held back by a delay, per call


class EchoHandler:
    """Echo for one call. With a delay, a drain task releases frames when they are due."""

    def __init__(self, ctx: CallContext, delay_ms: float) -> None:
        self._redis = ctx.redis
        self._out = ctx.settings.keys.call_out(ctx.call.call_id)
        self._maxlen = ctx.settings.out_stream_maxlen
        self._delay_s = delay_ms / 1000
        self._call_id = ctx.call.call_id
        self._queue: asyncio.Queue[tuple[float, bytes]] | None = None
        self._drainer: asyncio.Task[None] | None = None
        if self._delay_s > 0:
            self._queue = asyncio.Queue(MAX_QUEUED_FRAMES)
            self._drainer = asyncio.create_task(self._drain(), name=f"echo-{self._call_id}")

    async def handle(self, batch: Sequence[tuple[str, InEntry]]) -> None:
        speech = [e.pcm for _, e in batch if isinstance(e, InFrame) and not e.silent]
        if not speech:
            return
        if self._queue is None:
            await self._write(speech)
            return
        due = asyncio.get_running_loop().time() + self._delay_s
        for pcm in speech:
            await self._queue.put((due, pcm))  # waits (back-pressure) only if 60 s are queued

    async def aclose(self) -> None:
        if self._queue is not None and self._drainer is not None:
            await self._queue.join()
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer

    async def _write(self, frames: Sequence[bytes]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for pcm in frames:
                pipe.xadd(
                    self._out, encode_out(OutAudio(pcm)), maxlen=self._maxlen, approximate=True
                )
            await pipe.execute()

    async def _drain(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        held: tuple[float, bytes] | None = None  # taken from the queue but not yet due
        while True:
            due, pcm = held if held is not None else await queue.get()
            held = None
            wait_s = due - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            frames = [pcm]
            # Everything else already due goes in the same round trip.
            while not queue.empty():
                item = queue.get_nowait()
                if item[0] > loop.time():
                    held = item
                    break
                frames.append(item[1])
            try:
                await self._write(frames)
            except Exception:
                log.exception("call %s: echo could not write %d frames", self._call_id, len(frames))
            finally:
                for _ in frames:
                    queue.task_done()


def echo_factory(delay_ms: float = 0.0) -> HandlerFactory:
    """The echo kind: ``delay_ms`` holds each frame back that long after it was read."""
    if delay_ms < 0:
        raise ValueError(f"delay_ms must not be negative, got {delay_ms}")

    def factory(ctx: CallContext) -> CallHandler:
        return EchoHandler(ctx, delay_ms)

    return factory
