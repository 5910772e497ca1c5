"""In-memory ports, for unit tests of handlers without Redis.

>>> ctx = memory_context("call-1")
>>> handler = MyHandler(ctx)
>>> await handler.handle([("1-0", frame)])
>>> ctx.audio.played            # what it played, in order
>>> ctx.events.events           # what it published
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from callstream.shared.audio import Mode
from callstream.shared.entries import CallStarted
from callstream.shared.events import Event
from callstream.workers.api import CallContext, keyed_event


@dataclass
class MemoryAudioOut:
    """Records what a handler plays: ``played`` (PCM chunks), and every action in ``log``."""

    played: list[bytes] = field(default_factory=list)
    log: list[tuple[str, bytes | str | None]] = field(default_factory=list)

    def play(self, pcm: bytes) -> None:
        if pcm:
            self.played.append(pcm)
            self.log.append(("play", pcm))

    def stop(self) -> None:
        self.log.append(("stop", None))

    def mark(self, name: str) -> None:
        self.log.append(("mark", name))

    def pause(self) -> None:
        self.log.append(("pause", None))

    def resume(self) -> None:
        self.log.append(("resume", None))


@dataclass
class MemoryEventOut:
    """Records what a handler publishes, skipping ids already published (as the runtime's
    port skips those a previous owner published)."""

    call_id: str
    events: list[Event] = field(default_factory=list)
    published: set[str] = field(default_factory=set)

    def publish(
        self, type: str, data: Mapping[str, Any], *, key: str = "", time_ms: int | None = None
    ) -> Event:
        event = keyed_event(self.call_id, type, dict(data), key=key, time_ms=time_ms)
        if event.id not in self.published:
            self.published.add(event.id)
            self.events.append(event)
        return event

    def of_type(self, event_type: str) -> list[Event]:
        return [event for event in self.events if event.type == event_type]


@dataclass
class MemoryContext(CallContext):
    """A :class:`CallContext` whose ports are the in-memory ones (typed as such)."""

    audio: MemoryAudioOut = field(default_factory=MemoryAudioOut)
    events: MemoryEventOut = field(default_factory=lambda: MemoryEventOut("call"))


def memory_context(
    call_id: str = "call",
    *,
    rate_hz: int = 16000,
    mode: Mode = "mixed",
    kind: str = "test",
    state: dict[str, Any] | None = None,
    history: list[Event] | None = None,
    options: argparse.Namespace | None = None,
) -> MemoryContext:
    """A context for a fresh call (or a resumed one, given ``state`` or ``history``)."""
    events = MemoryEventOut(call_id, published={e.id for e in history or ()})
    return MemoryContext(
        call=CallStarted(call_id, rate_hz, mode, int(time.time() * 1000), "memory"),
        kind=kind,
        audio=MemoryAudioOut(),
        events=events,
        state=dict(state or {}),
        resumed=state is not None or bool(history),
        history=tuple(history or ()),
        options=options or argparse.Namespace(),
    )
