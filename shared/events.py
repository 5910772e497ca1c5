"""The event envelope shared by every producer and consumer of events (pure).

An event is JSON: ``{"v": 1, "id": …, "call_id": …, "type": …, "time": …, "data": {…}}``.
``id`` is stable — derived from what the event describes, not from when it was produced — so a
consumer can drop duplicates after a worker fails over and replays. In Redis an event is one
stream entry with fields ``type``, ``id`` and ``event`` (the JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from callstream.shared.entries import Fields
from callstream.shared.errors import EventError

SCHEMA_VERSION = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# Event types produced in this release.
CALL_STARTED = "call.started"
CALL_ENDED = "call.ended"
DTMF = "dtmf"
PLAYBACK_MARK = "playback.mark"
WORKER_FAILED = "worker.failed"


def iso_time(epoch_ms: int) -> str:
    """Epoch milliseconds as an ISO-8601 UTC string with millisecond precision."""
    moment = _EPOCH + epoch_ms * _ONE_MS
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso_ms(text: str) -> int | None:
    """ISO-8601 timestamp (as ACS sends it) to epoch milliseconds; None if unparseable."""
    try:
        moment = datetime.fromisoformat(text)  # Python 3.11+ reads a trailing "Z" itself
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MS


@dataclass(frozen=True, slots=True)
class Event:
    """One event about one call."""

    id: str
    call_id: str
    type: str
    time_ms: int
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": SCHEMA_VERSION,
                "id": self.id,
                "call_id": self.call_id,
                "type": self.type,
                "time": iso_time(self.time_ms),
                "data": dict(self.data),
            },
            separators=(",", ":"),
        )

    def fields(self) -> Fields:
        """Stream-entry fields for this event."""
        return {b"type": self.type, b"id": self.id, b"event": self.to_json()}

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """Parse an event's JSON; :class:`~callstream.shared.errors.EventError` if it is not
        a well-formed envelope (its ``data`` is not checked: see shared/catalogue.py)."""
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise EventError(f"an event should be JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise EventError(f"an event should be a JSON object, got {type(obj).__name__}")
        fields = {name: obj.get(name) for name in ("id", "call_id", "type", "time")}
        if not all(isinstance(value, str) for value in fields.values()):
            raise EventError(f"an event needs string id, call_id, type and time, got {fields}")
        data = obj.get("data", {})
        if not isinstance(data, dict):
            raise EventError(f"an event's data should be an object, got {type(data).__name__}")
        time_ms = parse_iso_ms(obj["time"])
        if time_ms is None:
            raise EventError(f"event time should be ISO-8601, got {obj['time']!r}")
        return cls(
            id=obj["id"], call_id=obj["call_id"], type=obj["type"], time_ms=time_ms, data=data
        )

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes]) -> Event:
        """The event of a stream entry (its ``event`` field)."""
        if b"event" not in raw:
            raise EventError(f"a stream entry of an event needs an 'event' field: {sorted(raw)}")
        return cls.from_json(raw[b"event"])
