"""The ports a handler gets from the runtime, backed by the replica's :class:`Writer`.

Nothing here waits: each call queues commands, which the writer sends in order with the
replica's other writes (see :mod:`callstream.workers.writer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from callstream.shared.entries import Fields, OutMark, OutPause, OutResume, OutStop, encode_out
from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.workers.api import keyed_event
from callstream.workers.writer import Writer, pack


def _xadd(maxlen: int | None, fields: Fields) -> tuple[Any, ...]:
    """XADD's arguments after the key; no MAXLEN when None (a stream trimmed elsewhere)."""
    args: list[Any] = ["MAXLEN", "~", maxlen, "*"] if maxlen is not None else ["*"]
    for name, value in fields.items():
        args.append(name)
        args.append(value)
    return tuple(args)


class RedisAudioOut:
    """Audio into one call: entries of ``cs:call:{id}:out``, which the gateway's egress paces."""

    def __init__(self, writer: Writer, call_id: str, settings: Settings) -> None:
        self._writer = writer
        self._call_id = call_id
        self._key = settings.keys.call_out(call_id)
        self._maxlen = settings.out_stream_maxlen
        # Everything before the PCM is the same for every chunk of this call: packed once
        # (the bytes hiredis.pack_command would make; a unit test compares them).
        head = pack("XADD", self._key, "MAXLEN", "~", self._maxlen, "*", "kind", "audio", "pcm", "")
        self._audio_head = head[: -len(b"$0\r\n\r\n")]
        self.key = self._key
        self.played = False  # the runtime watches the out streams of calls given audio

    def play(self, pcm: bytes) -> None:
        if pcm:
            self.played = True
            command = b"%b$%d\r\n%b\r\n" % (self._audio_head, len(pcm), pcm)
            self._writer.add_packed(self._call_id, command, audio=True)

    def stop(self) -> None:
        self._add(encode_out(OutStop()))

    def mark(self, name: str) -> None:
        self._add(encode_out(OutMark(name)))

    def pause(self) -> None:
        self._add(encode_out(OutPause()))

    def resume(self) -> None:
        self._add(encode_out(OutResume()))

    def _add(self, fields: Fields) -> None:
        self._writer.add(self._call_id, "XADD", self._key, *_xadd(self._maxlen, fields))


InsightsView = Callable[[Event], Event | None]
"""What of an event goes to ``cs:insights``: the event, another version of it (redacted), or
nothing. The call's own stream always gets the event as it is."""


class RedisEventOut:
    """Events of one call, to ``cs:call:{id}:events`` and ``cs:insights``.

    ``published`` holds the ids the call's events already had when this replica took the call
    over: publishing one of them again is skipped (a new owner re-reads from the checkpoint).
    ``insights_view`` (redaction mode) decides what of each event goes to ``cs:insights``.
    """

    def __init__(
        self,
        writer: Writer,
        call_id: str,
        settings: Settings,
        published: Iterable[str] = (),
        insights_view: InsightsView | None = None,
    ) -> None:
        self._writer = writer
        self._call_id = call_id
        keys = settings.keys
        self._call_stream: tuple[str, int | None] = (
            keys.call_events(call_id),
            settings.events_maxlen,
        )
        # cs:insights is trimmed by the gateways, around its consumer groups (bus/retention.py)
        self._insights: tuple[str, int | None] = (keys.insights, None)
        self._view = insights_view
        self._published = set(published)

    def publish(
        self, type: str, data: Mapping[str, Any], *, key: str = "", time_ms: int | None = None
    ) -> Event:
        event = keyed_event(self._call_id, type, data, key=key, time_ms=time_ms)
        if event.id in self._published:
            return event
        self.publish_event(event)
        return event

    def publish_event(self, event: Event) -> None:
        """Publish a ready-made event (the runtime's own)."""
        stream, maxlen = self._call_stream
        fields = event.fields()
        self._writer.add(self._call_id, "XADD", stream, *_xadd(maxlen, fields))
        shown = event if self._view is None else self._view(event)
        if shown is not None:
            stream, maxlen = self._insights
            fields = fields if shown is event else shown.fields()
            self._writer.add(self._call_id, "XADD", stream, *_xadd(maxlen, fields))
