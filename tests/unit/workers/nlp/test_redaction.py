"""Redaction mode's view of events on cs:insights (pure)."""

from __future__ import annotations

from typing import Any

from callstream.shared.catalogue import validate
from callstream.shared.events import Event
from callstream.workers.nlp.redaction import insights_view

CARD = "four one one one one one one one one one one one one one one one"


def transcript(text: str, status: str = "Final") -> Event:
    words: list[dict[str, Any]] = [
        {"text": word, "offset": 10_000_000 + i * 3_000_000, "duration": 2_000_000}
        for i, word in enumerate(text.split())
    ]
    return Event(
        "c:transcript:0:1000" + ("" if status == "Final" else ":partial:800"),
        "c",
        "transcript",
        1_700_000_000_000,
        {
            "text": text,
            "format": "display",
            "confidence": 0.7,
            "offset": 10_000_000,
            "duration": 50_000_000,
            "words": words,
            "participantRawID": "",
            "resultStatus": status,
        },
    )


def test_a_final_transcript_goes_to_insights_redacted_in_text_and_words() -> None:
    event = transcript(f"my card number is {CARD} thanks")
    shown = insights_view(event)
    assert shown is not None
    assert shown.id == event.id
    assert shown.data["text"] == "my card number is [CARD_NUMBER] thanks"
    assert [w["text"] for w in shown.data["words"]] == (
        ["my", "card", "number", "is"] + ["[CARD_NUMBER]"] * 16 + ["thanks"]
    )
    assert shown.data["redacted"] is True
    assert event.data["text"].endswith("one thanks")  # the original is untouched
    validate(shown.to_json())


def test_a_transcript_without_findings_is_marked_but_unchanged() -> None:
    shown = insights_view(transcript("i would like to check my balance"))
    assert shown is not None
    assert shown.data["text"] == "i would like to check my balance"
    assert shown.data["redacted"] is True


def test_partials_and_keys_pressed_stay_off_insights_and_other_events_pass() -> None:
    assert insights_view(transcript("my card number is four one one", "Intermediate")) is None
    dtmf = Event("c:dtmf:3", "c", "dtmf", 1, {"tone": "4", "participant": ""})
    assert insights_view(dtmf) is None
    started = Event("c:started", "c", "call.started", 1, {"rate_hz": 16000, "mode": "mixed"})
    assert insights_view(started) is started
