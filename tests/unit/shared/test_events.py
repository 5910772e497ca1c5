"""Event envelope (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.shared.errors import CallstreamError, EventError
from callstream.shared.events import SCHEMA_VERSION, Event, iso_time, parse_iso_ms
from tests.helpers import as_redis


def test_event_json_has_the_envelope_fields() -> None:
    event = Event("c1:dtmf:3", "c1", "dtmf", 1_731_698_172_925, {"tone": "5"})
    obj = json.loads(event.to_json())
    assert obj == {
        "v": SCHEMA_VERSION,
        "id": "c1:dtmf:3",
        "call_id": "c1",
        "type": "dtmf",
        "time": "2024-11-15T19:16:12.925Z",
        "data": {"tone": "5"},
    }


@given(st.integers(0, 4_000_000_000_000), st.dictionaries(st.text(max_size=5), st.integers()))
def test_event_round_trips_through_stream_fields(time_ms: int, data: dict[str, int]) -> None:
    event = Event("id", "call", "t", time_ms, data)
    assert Event.from_fields(as_redis(event.fields())) == event


def test_acs_timestamps_parse_to_epoch_ms() -> None:
    assert parse_iso_ms("2024-11-15T19:16:12.925Z") == 1_731_698_172_925
    assert parse_iso_ms("2024-11-15T19:16:12.925") == 1_731_698_172_925
    assert parse_iso_ms("yesterday") is None
    assert iso_time(1_731_698_172_925) == "2024-11-15T19:16:12.925Z"


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"id": "c:x", "call_id": "c", "type": "t"}',  # no time
        '{"id": 5, "call_id": "c", "type": "t", "time": "2025-01-01T00:00:00.000Z"}',
        '{"id": "c:x", "call_id": "c", "type": "t", "time": "yesterday"}',
        '{"id": "c:x", "call_id": "c", "type": "t", "time": "2025-01-01T00:00:00Z", "data": []}',
    ],
)
def test_a_malformed_event_is_an_event_error_of_the_one_hierarchy(text: str) -> None:
    with pytest.raises(EventError) as raised:
        Event.from_json(text)
    assert isinstance(raised.value, CallstreamError)
    with pytest.raises(EventError):
        Event.from_fields({b"type": b"t", b"id": b"c:x"})  # no event field at all
