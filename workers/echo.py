"""The echo worker: plays every non-silent inbound frame back into its call.

It is the end-to-end test of the pipeline and its latency probe. Frames go back in arrival
order, no earlier than ``delay_ms`` after the worker read them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence

from callstream.workers.api import CallContext, CallHandler, HandlerFactory, InFrame, Item, Kind

MAX_QUEUED_FRAMES = 3000  # 60 s of audio held back by a delay, per call


class EchoHandler:
    """Echo for one call. With a delay, a drain task releases frames when they are due."""

    def __init__(self, ctx: CallContext, delay_ms: float = 0.0) -> None:
        self._audio = ctx.audio
        self._delay_s = delay_ms / 1000
        self._queue: asyncio.Queue[tuple[float, bytes]] | None = None
        self._drainer: asyncio.Task[None] | None = None
        if self._delay_s > 0:
            self._queue = asyncio.Queue(MAX_QUEUED_FRAMES)
            self._drainer = asyncio.create_task(self._drain(), name=f"echo-{ctx.call_id}")

    async def handle(self, batch: Sequence[Item]) -> None:
        if self._queue is None:
            play = self._audio.play
            for _, entry in batch:
                if isinstance(entry, InFrame) and not entry.silent:
                    play(entry.pcm)
            return
        due = asyncio.get_running_loop().time() + self._delay_s
        for _, entry in batch:
            if isinstance(entry, InFrame) and not entry.silent:
                await self._queue.put((due, entry.pcm))  # waits only if 60 s are queued

    async def aclose(self) -> None:
        if self._queue is not None and self._drainer is not None:
            await self._queue.join()
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer

    async def _drain(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            due, pcm = await queue.get()
            wait_s = due - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            self._audio.play(pcm)
            queue.task_done()


def echo_factory(delay_ms: float = 0.0) -> HandlerFactory:
    """The echo kind: ``delay_ms`` holds each frame back that long after it was read."""
    if delay_ms < 0:
        raise ValueError(f"delay_ms must not be negative, got {delay_ms}")

    def factory(ctx: CallContext) -> CallHandler:
        return EchoHandler(ctx, delay_ms)

    return factory


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="hold each frame back this long (default 0)"
    )


KIND = Kind(
    "echo",
    configure=lambda options: echo_factory(getattr(options, "delay_ms", 0.0)),
    help="play every non-silent inbound frame back into the call",
    max_calls=50,
    add_arguments=_add_arguments,
)
