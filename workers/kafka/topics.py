"""What a callstream event becomes on Kafka (pure).

One topic per event family, so that a consumer subscribes to what it needs; every record is
keyed by its call id, so that all of one call's records land in the same partition of a topic,
in the order they were published; the event id travels in a header, so that consumers can drop
the duplicates at-least-once delivery may bring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from callstream.shared.events import Event

# Families and their event types. `*.done` and the gateway's own events are lifecycle; a type
# none of these name (a worker kind of your own) goes to OTHER.
TRANSCRIPTS = "transcripts"
INSIGHTS = "insights"
SUMMARIES = "summaries"
LIFECYCLE = "lifecycle"
AGENT = "agent"
OTHER = "other"
ANALYTICS = "analytics"  # the aggregates the Faust app computes (not a family of events)
FAMILIES = (TRANSCRIPTS, INSIGHTS, SUMMARIES, LIFECYCLE, AGENT, OTHER)

_BY_TYPE: Mapping[str, str] = {
    "transcript": TRANSCRIPTS,
    "speech.started": TRANSCRIPTS,
    "speech.stopped": TRANSCRIPTS,
    "nlp.sentiment": INSIGHTS,
    "nlp.key_phrases": INSIGHTS,
    "nlp.intent": INSIGHTS,
    "nlp.pii": INSIGHTS,
    "nlp.summary": SUMMARIES,
    "call.started": LIFECYCLE,
    "call.ended": LIFECYCLE,
    "dtmf": LIFECYCLE,
    "playback.mark": LIFECYCLE,
    "worker.failed": LIFECYCLE,
}

# Record headers (values are UTF-8).
EVENT_ID = "event-id"
EVENT_TYPE = "event-type"
SCHEMA_VERSION = "schema-version"
REDIS_ID = "redis-id"  # the entry's id in cs:insights: where it came from


def family(event_type: str) -> str:
    """The family of ``event_type``."""
    found = _BY_TYPE.get(event_type)
    if found is not None:
        return found
    if event_type.endswith(".done"):
        return LIFECYCLE
    if event_type.startswith("agent."):
        return AGENT
    return OTHER


def topic_name(prefix: str, name: str) -> str:
    """``{prefix}.{family}``: callstream.transcripts, callstream.analytics, ..."""
    return f"{prefix}.{name}"


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


def to_record(prefix: str, event: Event, redis_id: str) -> Record:
    """``event`` (read from cs:insights as entry ``redis_id``) as a record: in its family's
    topic, keyed by its call, its JSON as the value, stamped with the event's own time."""
    return Record(
        topic=topic_name(prefix, family(event.type)),
        key=event.call_id.encode(),
        value=event.to_json().encode(),
        headers=(
            (EVENT_ID, event.id.encode()),
            (EVENT_TYPE, event.type.encode()),
            (SCHEMA_VERSION, b"1"),
            (REDIS_ID, redis_id.encode()),
        ),
        timestamp_ms=event.time_ms,
    )
