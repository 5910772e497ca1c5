"""The contract between the worker runtime and a worker kind.

The runtime owns calls, reads their inbound streams in order and hands each batch of entries to
the kind's :class:`CallHandler`. A kind is a :data:`HandlerFactory`: given the call, it returns a
handler; the runtime closes it when the call ends or is handed to another replica.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import redis.asyncio as aioredis

from callstream.shared.entries import CallStarted, InEntry
from callstream.shared.settings import Settings


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler needs to know about its call.

    ``resume_from`` is the checkpoint (last processed in-stream entry id) when this replica took
    the call over from another; None for a fresh call. Entries after it may have been seen by the
    previous owner already: delivery is at least once.

    ``state_key`` is a Redis hash for the handler's own per-call state, for a new owner to find
    after a takeover: the runtime's checkpoint hash, which has the call's TTL and is deleted
    when the call is done. The runtime's fields there are ``entry_id``, ``owner``,
    ``handbacks`` and ``error``; any other field is the handler's.
    """

    call: CallStarted
    redis: aioredis.Redis
    settings: Settings
    resume_from: str | None
    state_key: str


class CallHandler(Protocol):
    """Processes one call's inbound entries, batch after batch, in stream order."""

    async def handle(self, batch: Sequence[tuple[str, InEntry]]) -> None:
        """Process entries ``(entry_id, entry)``; the runtime checkpoints after it returns."""

    async def aclose(self) -> None:
        """The call ended (an InEnd was in the last batch) or is being handed back."""


@runtime_checkable
class ResumePoint(Protocol):
    """A handler that must see some entries again after a takeover implements this.

    The transcribe worker, say, needs an utterance's audio from its start: checkpointing the
    last processed entry would make the next owner start mid-utterance.
    """

    def resume_from(self) -> str | None:
        """The earliest entry id the next owner must read again; None: nothing before the
        last processed entry."""


HandlerFactory = Callable[[CallContext], CallHandler]
