"""The public API for writing a worker kind: what a handler gets, and what it can do.

A worker kind is a :class:`Kind`: a name, the :class:`Inputs` it consumes, and a factory that
makes one :class:`CallHandler` per call. The runtime (:mod:`callstream.workers.runtime`) does
everything else — which replica serves which call, reading, checkpoints, failover, shutdown —
the same way for every kind. A handler never sees Redis: it gets a :class:`CallContext` with

* ``audio`` — an :class:`AudioOut` to play PCM into the call, stop it (barge-in) and mark
  playback points;
* ``events`` — an :class:`EventOut`, the one way to publish events (to the call's events
  stream and to the insights stream, with stable ids);
* ``state`` — a JSON-able dict that survives failover: it is saved with the read position and
  a replica that takes the call over starts with it;
* ``call``, ``format``, ``participants`` — what the call is.

Handlers are unit-tested with the in-memory ports of :mod:`callstream.workers.testing`.
Register a kind of your own under the entry-point group ``callstream.workers`` and run it with
``callstream worker NAME`` (docs/workers.md has a complete example).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from callstream.shared.audio import AudioFormat
from callstream.shared.entries import CallStarted, InDtmf, InEnd, InEntry, InFrame
from callstream.shared.events import CALL_ENDED, Event

__all__ = [
    "AUDIO",
    "AudioOut",
    "CallContext",
    "CallHandler",
    "Event",
    "EventOut",
    "HandlerFactory",
    "InDtmf",
    "InEnd",
    "InFrame",
    "Inputs",
    "Item",
    "Kind",
    "ResumePoint",
    "keyed_event",
]

KIND_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

Item = tuple[str, InEntry | Event]
"""One input of a handler: ``(stream entry id, value)``. Audio input gives :class:`InFrame`
and :class:`InDtmf` (ids of the call's inbound stream), event input gives :class:`Event` (ids
of the call's events stream); the last batch of a call ends with :class:`InEnd`."""


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a kind consumes of each call it serves.

    ``audio``: the call's inbound stream (20 ms frames, DTMF), in order. ``events``: the call's
    events of these types (e.g. ``{"transcript"}``), in order. With both, the two are merged in
    the order they were published. The call's input is complete when the audio has ended (the
    gateway's end marker) and, when events are read, when one of the ``until`` events has come:
    by default ``call.ended``; a kind that consumes another kind's results waits for that
    kind's ``*.done`` (e.g. ``{"transcribe.done"}``). Then the handler gets :class:`InEnd`.
    """

    audio: bool = True
    events: frozenset[str] = frozenset()
    until: frozenset[str] = frozenset({CALL_ENDED})

    def __post_init__(self) -> None:
        if not self.audio and not self.events:
            raise ValueError("a kind must consume the call's audio, some of its events, or both")

    @property
    def reads_events(self) -> bool:
        return bool(self.events)

    def as_json(self) -> dict[str, Any]:
        return {"audio": self.audio, "events": sorted(self.events), "until": sorted(self.until)}


AUDIO = Inputs()
"""The call's audio only (the default)."""


class AudioOut(Protocol):
    """Audio into the call. Calls return at once; the runtime writes in order, batched."""

    def play(self, pcm: bytes) -> None:
        """Queue 16-bit mono PCM at the call's rate (any length; the gateway paces it)."""

    def stop(self) -> None:
        """Barge-in: drop what is queued for playback and tell the platform to stop."""

    def mark(self, name: str) -> None:
        """A ``playback.mark`` event is published when playback reaches this point."""

    def pause(self) -> None:
        """Hold playback (a possible barge-in): the platform stops at once; what it had not
        played is kept, to go on with :meth:`resume` or be dropped by :meth:`stop`."""

    def resume(self) -> None:
        """Play on from where :meth:`pause` held it."""


class EventOut(Protocol):
    """The one way a handler publishes events (the call's events stream and ``cs:insights``)."""

    def publish(
        self, type: str, data: Mapping[str, Any], *, key: str = "", time_ms: int | None = None
    ) -> Event:
        """Publish an event of ``type`` with id ``{call_id}:{type}`` or ``{call_id}:{type}:{key}``.

        ``key`` names what the event is about (an utterance's channel and offset, say), never
        when it was made, so a replica that takes the call over and publishes it again makes
        the same id: an event whose id this call's events already hold is not published again.
        ``time_ms`` (epoch ms) defaults to now.
        """


def keyed_event(
    call_id: str,
    type: str,
    data: Mapping[str, Any],
    *,
    key: str = "",
    time_ms: int | None = None,
) -> Event:
    """The event :meth:`EventOut.publish` publishes: id ``{call_id}:{type}`` or
    ``{call_id}:{type}:{key}``, time ``time_ms`` (epoch ms) or now."""
    event_id = f"{call_id}:{type}:{key}" if key else f"{call_id}:{type}"
    return Event(
        event_id, call_id, type, int(time.time() * 1000) if time_ms is None else time_ms, data
    )


@dataclass
class CallContext:
    """What a handler knows of its call, and its ports."""

    call: CallStarted
    kind: str
    audio: AudioOut
    events: EventOut
    state: dict[str, Any] = field(default_factory=dict)
    """JSON-able per-call state: saved with the read position at every checkpoint; a replica
    that takes the call over starts with the state of the last checkpoint."""
    resumed: bool = False
    """True when this replica took the call over (or back) from another: input after the last
    checkpoint is delivered again (at least once)."""
    history: Sequence[Event] = ()
    """When resumed: the call's most recent events (oldest first), those the previous owner
    published among them. Empty for a fresh call."""
    participants: dict[int, str] = field(default_factory=dict)
    """Channel → participantRawID of the speakers heard so far (unmixed audio input)."""
    options: argparse.Namespace = field(default_factory=argparse.Namespace)
    """The kind's command-line options."""

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def format(self) -> AudioFormat:
        return self.call.format


class CallHandler(Protocol):
    """Processes one call's input, batch after batch, in order."""

    async def handle(self, batch: Sequence[Item]) -> None:
        """Process ``batch``; the runtime checkpoints after it returns. Raising fails the call
        (it is retried from its checkpoint, up to ``CS_WORKER_MAX_ATTEMPTS`` attempts)."""

    async def aclose(self) -> None:
        """The call ended (:class:`InEnd` was in the last batch) or is handed to another
        replica. What is published after this returns is not part of the call's results."""


@runtime_checkable
class ResumePoint(Protocol):
    """A handler that must see some audio again after a takeover implements this.

    The transcribe worker, say, needs an utterance's audio from its start: checkpointing the
    last processed entry would make the next owner start mid-utterance.
    """

    def resume_from(self) -> str | None:
        """The earliest inbound entry id the next owner must read again; None: nothing before
        the last processed entry."""


HandlerFactory = Callable[[CallContext], CallHandler]


@dataclass(frozen=True, slots=True)
class Kind:
    """A worker kind, as ``callstream worker NAME`` runs it.

    Give ``handler`` (a factory of handlers, e.g. the handler class), or ``configure`` when the
    kind needs its command-line options first: it is called once per replica with them and
    returns the factory. ``add_arguments`` adds the kind's own options to its parser.
    """

    name: str
    handler: HandlerFactory | None = None
    inputs: Inputs = AUDIO
    help: str = ""
    max_calls: int = 50
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    configure: Callable[[argparse.Namespace], HandlerFactory] | None = None

    def __post_init__(self) -> None:
        if not KIND_NAME.fullmatch(self.name):
            raise ValueError(
                f"a kind's name must be 1-32 characters of a-z, 0-9, '_' or '-', starting "
                f"with a letter; got {self.name!r}"
            )
        if (self.handler is None) == (self.configure is None):
            raise ValueError(f"kind {self.name}: give either handler or configure")

    def factory(self, options: argparse.Namespace) -> HandlerFactory:
        """The handler factory of one replica."""
        if self.configure is not None:
            return self.configure(options)
        assert self.handler is not None
        return self.handler

    @property
    def done_event(self) -> str:
        """The event type this kind publishes when a call's results are complete."""
        return f"{self.name}.done"
