"""``callstream tail``'s pure core: events in, terminal operations and text out (no Redis)."""

from __future__ import annotations

import io
import json
from datetime import UTC
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.shared.catalogue import spec_for
from callstream.shared.errors import ConfigError
from callstream.shared.events import Event
from callstream.tail import (
    CLEAR_LINE,
    PALETTE,
    EventFilter,
    HumanView,
    JsonSink,
    Line,
    Op,
    RecentIds,
    Screen,
    Status,
    check_call_id,
    format_offset,
    json_line,
    onset_ms,
    parse_types,
    participant_color,
    participant_label,
    resume_position,
    short_call,
    summary_value,
    use_color,
    utterance_of,
)
from tests.helpers import as_redis

CALL = "call-1"
CALLER = "4:+14255550123"
AGENT = "8:acs:1b5cc06b-f352-4571-b1e6-d9b259b7c776"
T0 = 1_741_944_416_000  # 2025-03-14T09:26:56Z
UTT = f"{CALL}:transcript:1:5960"
ESC = "\x1b"
PREFIX = "09:26:56 call-1" + " " * 10  # time, call id padded to 14, two spaces


def view(*, tty: bool = False, color: bool = False, **options: Any) -> HumanView:
    return HumanView(tty=tty, color=color, tz=UTC, **options)


def transcript(
    text: str,
    *,
    partial_ms: int | None = None,
    call: str = CALL,
    channel: int = 1,
    onset: int = 5960,
    who: str = CALLER,
    at_ms: int = 0,
) -> Event:
    event_id = f"{call}:transcript:{channel}:{onset}"
    if partial_ms is not None:
        event_id += f":partial:{partial_ms}"
    data = {
        "text": text,
        "format": "display",
        "confidence": 0.5,
        "offset": onset * 10_000,
        "duration": 10_000_000,
        "words": [],
        "participantRawID": who,
        "resultStatus": "Final" if partial_ms is None else "Intermediate",
    }
    return Event(event_id, call, "transcript", T0 + at_ms, data)


def event(event_type: str, data: dict[str, Any], *, key: str = "", call: str = CALL) -> Event:
    return Event(f"{call}:{event_type}{key}", call, event_type, T0, data)


def example(event_type: str) -> Event:
    """The catalogue's example of a type (what its publisher sends)."""
    spec = spec_for(event_type)
    assert spec is not None
    return Event.from_json(json.dumps(spec.example))


def sentiment(utterance: str = UTT, score: float = -0.62) -> Event:
    data = {
        "utterance": utterance,
        "participant": CALLER,
        "score": score,
        "label": "negative",
        "rolling": -0.4,
    }
    event_id = utterance.replace(":transcript:", ":nlp.sentiment:")
    return Event(event_id, CALL, "nlp.sentiment", T0 + 2100, data)


def texts(ops: list[Op]) -> list[str]:
    return [op.text for op in ops if isinstance(op, Line)]


# ---------------------------------------------------------------- transcripts


def test_on_a_terminal_partials_rewrite_one_status_line_and_the_final_replaces_it() -> None:
    tail, screen = view(tty=True), Screen()
    first = tail.event(transcript("please", partial_ms=400))
    second = tail.event(transcript("please transfer me", partial_ms=800))
    final = tail.event(transcript("please transfer me to billing"))

    assert first == [Status(PREFIX + "4:+14255550123: please …")]
    assert isinstance(second[0], Status)
    assert "please transfer me …" in second[0].text
    assert final == [Line(PREFIX + "4:+14255550123: please transfer me to billing")]
    text = screen.render(first) + screen.render(second) + screen.render(final)
    assert text == (
        CLEAR_LINE + first[0].text + CLEAR_LINE + second[0].text + CLEAR_LINE + final[0].text + "\n"
    )


def test_off_a_terminal_partials_are_not_shown_only_finals() -> None:
    tail = view(tty=False)
    assert tail.event(transcript("please", partial_ms=400)) == []
    assert texts(tail.event(transcript("please transfer me"))) == [
        PREFIX + "4:+14255550123: please transfer me"
    ]


def test_a_partial_arriving_after_its_final_is_dropped() -> None:
    tail = view(tty=True)
    tail.event(transcript("hello there"))
    assert tail.event(transcript("hello", partial_ms=300)) == []


def test_a_final_brings_back_the_partial_of_another_utterance_still_spoken() -> None:
    tail, screen = view(tty=True), Screen()
    caller = tail.event(transcript("i would", partial_ms=400))
    agent = tail.event(transcript("one", partial_ms=200, channel=0, onset=7000, who=AGENT))
    done = tail.event(transcript("i would like a refund"))
    assert isinstance(done[0], Line)
    assert done[1:] == [agent[0]]
    screen.render(caller + agent)
    assert screen.render(done) == CLEAR_LINE + done[0].text + "\n" + CLEAR_LINE + agent[0].text


def test_transcribe_done_forgets_partials_that_will_get_no_final() -> None:
    tail = view(tty=True)
    tail.event(transcript("half a sen", partial_ms=400))
    ops = tail.event(event("transcribe.done", {"kind": "transcribe", "reason": "normal"}))
    assert ops == [Line(PREFIX + "transcribe done (normal)")]


def test_the_status_line_is_cut_to_the_terminal_width() -> None:
    tail = view(tty=True, width=40)
    (status,) = tail.event(transcript("word " * 30, partial_ms=400))
    assert isinstance(status, Status)
    assert len(status.text) == 39
    assert status.text.endswith("word …")


def test_a_final_without_words_says_so() -> None:
    assert texts(view().event(transcript(""))) == [PREFIX + "4:+14255550123: (no words)"]


def test_exiting_clears_the_status_line_on_a_terminal_only() -> None:
    tail, screen = view(tty=True), Screen()
    screen.render(tail.event(transcript("please", partial_ms=400)))
    assert screen.render(tail.close()) == CLEAR_LINE
    assert view(tty=False).close() == []


# ---------------------------------------------------------------- insights


def test_insights_print_indented_under_their_utterance() -> None:
    tail = view(show_call=False)
    lines = texts(tail.event(transcript("please transfer me")))
    lines += texts(tail.event(sentiment()))
    intent = {"utterance": UTT, "name": "transfer", "score": 0.87}
    lines += texts(tail.event(event("nlp.intent", intent)))
    assert lines == [
        "09:26:56  4:+14255550123: please transfer me",
        "09:26:58      ↳ sentiment negative (-0.62, rolling -0.40)",
        "09:26:56      ↳ intent transfer (0.87)",
    ]


def test_an_insight_not_under_its_utterance_names_it_by_its_onset() -> None:
    tail = view(show_call=False)
    tail.event(transcript("please transfer me"))
    tail.event(event("dtmf", {"tone": "5", "participant": CALLER}, key=":412"))
    phrases = {"utterance": UTT, "phrases": ["billing department", "transfer"]}
    assert texts(tail.event(event("nlp.key_phrases", phrases))) == [
        "09:26:56      ↳ @0:05.9 key phrases: billing department, transfer"
    ]
    # the next insight of the same utterance sits right under it
    assert texts(tail.event(sentiment())) == [
        "09:26:58      ↳ sentiment negative (-0.62, rolling -0.40)"
    ]


def test_an_insight_of_an_earlier_utterance_after_a_later_final_names_it() -> None:
    tail = view(show_call=False)
    tail.event(transcript("first"))
    tail.event(transcript("second", onset=9000, at_ms=4000))
    (line,) = texts(tail.event(sentiment()))
    assert "↳ @0:05.9 sentiment" in line


def test_pii_and_other_insights() -> None:
    tail = view(show_call=False)
    tail.event(transcript("my card is 4111111111111111"))
    pii = {
        "utterance": UTT,
        "redacted_text": "my card is [CREDIT_CARD]",
        "entities": [{"type": "credit_card", "start": 11, "end": 24}, {"type": "credit_card"}],
    }
    assert texts(tail.event(event("nlp.pii", pii))) == [
        '09:26:56      ↳ pii: "my card is [CREDIT_CARD]" (credit_card)'
    ]
    other = {"utterance": UTT, "emotion": "calm"}
    assert texts(tail.event(event("nlp.emotion", other))) == [
        '09:26:56      ↳ emotion {"emotion":"calm"}'
    ]


def test_insights_take_the_colour_of_their_speaker() -> None:
    tail = view(color=True, show_call=False)
    tail.event(transcript("please transfer me"))
    (line,) = texts(tail.event(sentiment()))
    color = participant_color(CALLER)
    assert f"\x1b[{color}m    ↳ \x1b[0m\x1b[{color}msentiment negative" in line


# ---------------------------------------------------------------- summary


def test_the_catalogues_transcript_insights_and_summary_read_as_a_conversation() -> None:
    tail = view(show_call=False)
    types = ["transcript", "nlp.sentiment", "nlp.key_phrases", "nlp.intent", "nlp.pii"]
    lines = [line for t in [*types, "nlp.summary"] for line in texts(tail.event(example(t)))]
    assert lines == [
        "09:26:56  4:+14255550123: please transfer me to the billing department",
        "09:26:56      ↳ sentiment negative (-0.62, rolling -0.31)",
        "09:26:56      ↳ key phrases: billing department, transfer",
        "09:26:56      ↳ intent billing_question (0.86)",
        '09:26:56      ↳ pii: "my card number is [CARD_NUMBER]" (card_number)',
        "09:30:02  call summary",
        "09:30:02    participant     talk time  turns  interruptions  sentiment",
        "09:30:02    4:+14255550123     1:11.2     19              3      -0.21",
        "09:30:02    8:acs:agent        1:04.8     18              1      +0.30",
        "09:30:02    duration_s: 3:11.3",
        "09:30:02    utterances: 42",
        "09:30:02    silence_ratio: 29%",
        "09:30:02    sentiment_trend: improving (-0.18 → +0.20)",
        "09:30:02    key_phrases: billing department, late fee, refund",
        "09:30:02    intents: billing_question ×2 (0.86)",
        "09:30:02    dtmf: 412",
        "09:30:02    dtmf_count: 3",
    ]


def test_a_summary_of_another_shape_is_still_a_table_of_participants_then_the_call() -> None:
    data = {
        "participants": {
            CALLER: {"talk_time_s": 72.4, "turns": 14, "interruptions": 2, "mean_sentiment": -0.21},
            AGENT: {"talk_time_s": 31, "turns": 12, "interruptions": 0, "mean_sentiment": 0.3},
        },
        "silence_ratio": 0.18,
        "sentiment_trend": "improving",
        "key_phrases": ["billing department", "refund"],
        "intents": {"transfer": 2},
        "dtmf": "5#",
    }
    lines = texts(view(show_call=False).event(event("nlp.summary", data)))
    assert lines == [
        "09:26:56  call summary",
        "09:26:56    participant        talk time  turns  interruptions  sentiment",
        "09:26:56    4:+14255550123        1:12.4     14              2      -0.21",
        "09:26:56    8:acs:1b5c…b7c776     31.0 s     12              0      +0.30",
        "09:26:56    silence_ratio: 18%",
        "09:26:56    sentiment_trend: improving",
        "09:26:56    key_phrases: billing department, refund",
        "09:26:56    intents: transfer=2",
        "09:26:56    dtmf: 5#",
    ]


def test_a_summary_of_unexpected_shape_is_shown_as_it_came() -> None:
    data = {
        "participants": {CALLER: {"talk_time_s": "long", "laughs": 3}, "": {}},
        "nested": {"a": [1, {"b": 2}]},
        "nothing": None,
    }
    lines = texts(view(show_call=False).event(event("nlp.summary", data)))
    assert lines[1:] == [
        "09:26:56    participant     talk time  laughs",
        "09:26:56    4:+14255550123       long       3",
        "09:26:56    mixed                   -       -",
        '09:26:56    nested: {"a":[1,{"b":2}]}',
        "09:26:56    nothing: -",
    ]
    odd = texts(view(show_call=False).event(event("nlp.summary", {"participants": [1, 2]})))
    assert odd[1:] == ["09:26:56    participants: 1, 2"]


def test_summary_values() -> None:
    assert summary_value([1, 2.5, "x"]) == "1, 2.50, x"
    assert summary_value({"a": 1, "b": None}) == "a=1, b=null"
    assert summary_value("two\nlines") == "two lines"
    assert summary_value("x" * 1000).endswith("…")


# ---------------------------------------------------------------- lifecycle


@pytest.mark.parametrize(
    ("event_type", "data", "expected"),
    [
        (
            "call.started",
            {"rate_hz": 16000, "mode": "unmixed"},
            "call started 16 kHz unmixed (call-1)",
        ),
        ("call.ended", {"reason": "normal", "frames": 9763}, "call ended normal, 9763 frames"),
        ("dtmf", {"tone": "#", "participant": ""}, "dtmf #"),
        ("playback.mark", {"name": "greeting-done"}, "mark greeting-done"),
        ("echo.done", {"kind": "echo", "reason": "inbound_idle"}, "echo done (inbound_idle)"),
        (
            "worker.failed",
            {"kind": "nlp", "attempts": 5, "error": "boom"},
            "nlp failed after 5 attempts: boom",
        ),
        ("shout.said", {"words": 3}, 'shout.said {"words":3}'),
    ],
)
def test_lifecycle_events_are_one_line_each(
    event_type: str, data: dict[str, Any], expected: str
) -> None:
    assert texts(view(show_call=False).event(event(event_type, data))) == [f"09:26:56  {expected}"]


def test_speech_events_only_when_asked_for() -> None:
    speech = event(
        "speech.started", {"participantRawID": CALLER, "channel": 1, "offset": 59_600_000}
    )
    assert view().event(speech) == []
    assert texts(view(show_call=False, show_speech=True).event(speech)) == [
        "09:26:56  speech started 4:+14255550123 @0:05.9"
    ]


def test_every_line_names_its_call_when_several_are_followed() -> None:
    long_call = "421f0b00-5c3e-4b8a-9a39-0b7f3e2c8d11~2"
    (line,) = texts(view().event(event("call.ended", {"reason": "normal"}, call=long_call)))
    assert line == "09:26:56 421f0b00…8d11~2  call ended normal"


# ---------------------------------------------------------------- colour


def test_no_escape_sequence_without_colour() -> None:
    tail = view(tty=True, color=False)
    ops = tail.event(transcript("hi", partial_ms=100)) + tail.event(transcript("hi there"))
    ops += tail.event(sentiment()) + tail.event(event("call.ended", {"reason": "normal"}))
    assert not any(ESC in op.text for op in ops)


def test_with_colour_a_participant_keeps_its_colour() -> None:
    color = participant_color(CALLER)
    assert color in PALETTE
    assert participant_color(CALLER) == color
    assert participant_color("") is None
    (line,) = texts(view(color=True).event(transcript("hello")))
    assert f"\x1b[1;{color}m{CALLER}:\x1b[0m \x1b[{color}mhello\x1b[0m" in line
    assert line.startswith("\x1b[2m09:26:56")  # the time and call, dim


def test_participants_get_different_colours_often_enough() -> None:
    ids = [f"4:+1425555{n:04d}" for n in range(50)]
    assert len({participant_color(i) for i in ids}) == len(PALETTE)


@pytest.mark.parametrize(
    ("isatty", "env", "flag", "expected"),
    [
        (True, {}, False, True),
        (False, {}, False, False),
        (True, {"NO_COLOR": "1"}, False, False),
        (True, {"NO_COLOR": ""}, False, True),
        (True, {"TERM": "dumb"}, False, False),
        (True, {}, True, False),
    ],
)
def test_colour_only_on_a_terminal_without_no_color(
    isatty: bool, env: dict[str, str], flag: bool, expected: bool
) -> None:
    assert use_color(isatty=isatty, env=env, no_color=flag) is expected


# ---------------------------------------------------------------- filters, ids, positions


def test_type_patterns_and_call_filter() -> None:
    assert parse_types(["transcript,nlp.*", " *.done ,", ""]) == (
        "transcript",
        "nlp.*",
        "*.done",
    )
    selection = EventFilter(call_id="abc", types=("transcript", "nlp.*", "*.done"))
    assert selection.matches("abc", "nlp.sentiment")
    assert selection.matches("abc", "transcribe.done")
    assert not selection.matches("abc", "nlp")
    assert not selection.matches("abc", "dtmf")
    assert not selection.matches("abc~2", "transcript")  # another call that reused the id
    assert EventFilter().matches("any", "anything")
    assert EventFilter(types=("speech.*",)).names("speech.started")
    assert not EventFilter().names("speech.started")


def test_call_ids_are_checked() -> None:
    assert check_call_id("abc~2") == "abc~2"
    with pytest.raises(ConfigError):
        check_call_id("a b")
    with pytest.raises(ConfigError):
        check_call_id("abc~x")


def test_recent_ids_drop_duplicates_and_stay_bounded() -> None:
    recent = RecentIds(size=2)
    assert recent.add("a")
    assert not recent.add("a")
    assert recent.add("b")
    assert recent.add("c")
    assert recent.add("a")  # forgotten: only the last two are kept


@pytest.mark.parametrize(
    ("last", "generated", "expected"),
    [
        ("1700-3", "1700-3", "1700-3"),  # nothing new, or a network outage: on from the last
        ("1700-3", "1800-0", "1700-3"),  # entries added meanwhile: read them
        ("1700-3", None, "0-0"),  # the key is gone: whatever comes is new
        ("1700-3", "1700-2", "0-0"),  # begun again (or from an older snapshot): from its start
        ("1700-3", "5-0", "0-0"),
    ],
)
def test_where_reading_resumes_after_an_outage(
    last: str, generated: str | None, expected: str
) -> None:
    assert resume_position(last, generated) == expected


def test_json_lines_are_the_events_field_as_published() -> None:
    published = transcript("hello").to_json()
    assert json_line(published.encode()) == published
    pretty = json.dumps(json.loads(published), indent=2)
    assert json_line(pretty) == published


def test_the_json_sink_prints_each_selected_event_once_and_reports_bad_entries() -> None:
    out, err = io.StringIO(), io.StringIO()
    sink = JsonSink(EventFilter(types=("transcript",)), out, err)
    final = transcript("hello")
    sink.entry("1-0", as_redis(final.fields()))
    sink.entry("2-0", as_redis(final.fields()))  # a duplicate
    sink.entry("3-0", as_redis(event("dtmf", {"tone": "1", "participant": ""}).fields()))
    sink.entry("4-0", {b"type": b"transcript", b"event": b"{not json"})
    sink.entry("5-0", {b"type": b"dtmf", b"event": b"{not json"})
    assert out.getvalue() == final.to_json() + "\n"
    assert err.getvalue().startswith("callstream tail: skipped entry 4-0: ")
    assert "5-0" not in err.getvalue()


def test_screen_suspends_and_resumes_the_status_line() -> None:
    screen = Screen()
    assert screen.suspend() == ""
    assert screen.resume() == ""
    screen.render([Status("partial …")])
    assert screen.suspend() == CLEAR_LINE
    assert screen.resume() == CLEAR_LINE + "partial …"
    assert screen.render([Line("final")]) == CLEAR_LINE + "final\n"
    assert screen.render([Status("")]) == ""


def test_small_formatters() -> None:
    assert format_offset(5960) == "0:05.9"
    assert format_offset(59_990) == "0:59.9"
    assert format_offset(65_900) == "1:05.9"
    assert format_offset(3_723_000) == "1:02:03"
    assert utterance_of(f"{UTT}:partial:400") == UTT
    assert onset_ms(f"{UTT}:partial:400") == 5960
    assert onset_ms("x:y") is None
    assert short_call("short-id") == "short-id"
    assert participant_label("") == "mixed"
    assert participant_label(AGENT) == "8:acs:1b5c…b7c776"


# ---------------------------------------------------------------- never crash

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_known = ["utterance", "participant", "participants", "score", "label", "rolling", "phrases"]
_data = st.dictionaries(
    st.sampled_from([*_known, "name", "redacted_text", "entities", "text", "resultStatus"])
    | st.text(max_size=8),
    _json,
    max_size=6,
)
_types = st.sampled_from(
    [
        "transcript",
        "nlp.sentiment",
        "nlp.key_phrases",
        "nlp.intent",
        "nlp.pii",
        "nlp.summary",
        "nlp.other",
        "call.started",
        "call.ended",
        "dtmf",
        "speech.started",
        "playback.mark",
        "transcribe.done",
        "worker.failed",
        "custom.type",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    event_type=_types,
    data=_data,
    event_id=st.text(max_size=40),
    tty=st.booleans(),
    color=st.booleans(),
)
def test_no_data_shape_crashes_the_view(
    event_type: str, data: dict[str, Any], event_id: str, tty: bool, color: bool
) -> None:
    tail, screen = HumanView(tty=tty, color=color, show_speech=True, tz=UTC), Screen()
    for ev in (Event(event_id, CALL, event_type, T0, data), sentiment()):
        ops = tail.event(ev)
        assert all(isinstance(op, Line | Status) and "\n" not in op.text for op in ops)
        assert isinstance(screen.render(ops), str)


def test_a_kinds_done_is_a_lifecycle_line_even_for_the_nlp_kind() -> None:
    lines = texts(view().event(event("nlp.done", {"kind": "nlp", "reason": "normal"}, key="")))
    assert lines == [PREFIX + "nlp done (normal)"]


def test_a_summary_key_with_a_line_break_stays_on_its_line() -> None:
    """Found by the property test above: keys of a nested object were printed raw."""
    ops = view().event(event("nlp.summary", {"utterance": {"\n": None}}))
    assert all("\n" not in op.text for op in ops if isinstance(op, Line))


def test_an_agent_turn_is_what_it_said_with_how_it_ended() -> None:
    played = example("agent.turn")
    [line] = texts(view().event(played))
    assert line.endswith("agent: Sure. What is your account number?  [billing]")
    barged = Event(
        played.id,
        played.call_id,
        played.type,
        played.time_ms,
        {**played.data, "ended": "barged_in", "interrupted": True, "holds": 1, "intent": None},
    )
    [line] = texts(view().event(barged))
    assert line.endswith("agent: Sure. What is your account number?  [barged in, held 1×]")
