"""The nlp kind's handler with in-memory ports (no I/O): insights per final, a summary at the
end, nothing twice after a takeover, redaction mode."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from callstream.shared.catalogue import validate
from callstream.shared.events import Event
from callstream.workers.api import InEnd
from callstream.workers.nlp.intents import IntentMatcher, default_intents
from callstream.workers.nlp.phrases import KeyPhrases
from callstream.workers.nlp.sentiment import SentimentScorer
from callstream.workers.nlp.worker import KIND, Analysers, NlpHandler, configure
from callstream.workers.testing import MemoryContext, memory_context

CALLER, AGENT = "4:+14255550123", "8:acs:agent"
CARD = "four one one one one one one one one one one one one one one one"


def analysers(*, redact: bool = False) -> Analysers:
    return Analysers(SentimentScorer(), KeyPhrases(), IntentMatcher(default_intents()), redact)


def transcript(
    call_id: str, channel: int, onset_ms: int, text: str, who: str, *, final: bool = True
) -> Event:
    key = f"{channel}:{onset_ms}" + ("" if final else ":partial:500")
    return Event(
        f"{call_id}:transcript:{key}",
        call_id,
        "transcript",
        1_700_000_000_000 + onset_ms,
        {
            "text": text,
            "format": "display",
            "confidence": 0.8,
            "offset": onset_ms * 10_000,
            "duration": 2_000 * 10_000,
            "words": [],
            "participantRawID": who,
            "resultStatus": "Final" if final else "Intermediate",
        },
    )


def call_events(call_id: str) -> list[Event]:
    return [
        Event(f"{call_id}:started", call_id, "call.started", 1_700_000_000_000, {}),
        transcript(call_id, 1, 1000, "this is the worst service i have ever had", CALLER),
        transcript(call_id, 1, 4000, "my card number is", CALLER, final=False),
        transcript(call_id, 1, 4000, f"my card number is {CARD}", CALLER),
        Event(f"{call_id}:dtmf:1", call_id, "dtmf", 1_700_000_008_000, {"tone": "1"}),
        transcript(call_id, 2, 9000, "i understand let me help you with that", AGENT),
        transcript(call_id, 1, 12000, "i want to cancel my subscription", CALLER),
        Event(f"{call_id}:ended", call_id, "call.ended", 1_700_000_020_000, {"reason": "normal"}),
    ]


async def run(ctx: MemoryContext, events: list[Event], an: Analysers) -> None:
    handler = NlpHandler(ctx, an)
    await handler.handle([(f"{i}-0", e) for i, e in enumerate(events)])
    await handler.handle([("99-0", InEnd("normal"))])
    await handler.aclose()


def by_type(ctx: MemoryContext, event_type: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in ctx.events.of_type(event_type)]


async def test_each_final_gets_insights_and_the_call_a_summary() -> None:
    ctx = memory_context("c1", mode="unmixed", kind="nlp")
    await run(ctx, call_events("c1"), analysers())
    sentiments = by_type(ctx, "nlp.sentiment")
    assert len(sentiments) == 4  # finals only
    complaint = sentiments[0]
    assert complaint["utterance"] == "c1:transcript:1:1000"
    assert complaint["participant"] == CALLER
    assert complaint["label"] == "negative"
    assert complaint["score"] < -0.05
    # The caller's running level: an exponentially weighted mean (alpha 0.3) of their scores.
    card = sentiments[1]
    assert card["utterance"] == "c1:transcript:1:4000"
    expected = 0.3 * card["score"] + 0.7 * complaint["score"]
    assert card["rolling"] == pytest.approx(expected, abs=1e-3)
    [pii] = by_type(ctx, "nlp.pii")
    assert pii["utterance"] == "c1:transcript:1:4000"
    assert pii["redacted_text"] == "my card number is [CARD_NUMBER]"
    assert [e["type"] for e in pii["entities"]] == ["card_number"]
    intents = by_type(ctx, "nlp.intent")
    assert {"utterance": "c1:transcript:1:12000", "name": "cancel_subscription"} in [
        {"utterance": i["utterance"], "name": i["name"]} for i in intents
    ]
    [summary] = by_type(ctx, "nlp.summary")
    assert set(summary["participants"]) == {CALLER, AGENT}
    assert summary["participants"][CALLER]["turns"] == 2
    assert summary["duration_s"] == 20.0
    assert summary["dtmf"] == "1"
    assert "cancel_subscription" in [i["name"] for i in summary["intents"]]
    for event in ctx.events.events:  # every insight is as the catalogue documents it
        validate(event.to_json())


async def test_a_replica_taking_over_publishes_nothing_twice_and_sums_up_the_same() -> None:
    """The first owner handles part of the call and dies; the new one starts from the state
    of its last checkpoint with the events published so far, is handed everything after that
    checkpoint again, and ends with the same insights as an uninterrupted run."""
    events = call_events("c2")
    whole = memory_context("c2", mode="unmixed", kind="nlp")
    await run(whole, events, analysers())

    first = memory_context("c2", mode="unmixed", kind="nlp")
    handler = NlpHandler(first, analysers())
    await handler.handle([(f"{i}-0", e) for i, e in enumerate(events[:2])])
    checkpoint_state = json.loads(json.dumps(first.state))  # saved after the first batch
    await handler.handle([(f"{i}-0", e) for i, e in enumerate(events[2:5], start=2)])
    # dies here: the second batch's insights are published, its checkpoint is not

    second = memory_context(
        "c2", mode="unmixed", kind="nlp", state=checkpoint_state, history=first.events.events
    )
    await run(second, events[2:], analysers())
    published = first.events.events + second.events.events
    ids = [e.id for e in published]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(e.id for e in whole.events.events)
    assert by_type(second, "nlp.summary") == by_type(whole, "nlp.summary")


async def test_redaction_mode_keeps_card_digits_out_of_phrases_and_tones_out_of_the_summary() -> (
    None
):
    ctx = memory_context("c3", mode="unmixed", kind="nlp")
    await run(ctx, call_events("c3"), analysers(redact=True))
    for phrases in by_type(ctx, "nlp.key_phrases"):
        for phrase in phrases["phrases"]:
            assert "one one" not in phrase
    [summary] = by_type(ctx, "nlp.summary")
    assert (summary["dtmf"], summary["dtmf_count"]) == (None, 1)


def test_the_kind_reads_events_until_the_transcripts_are_done() -> None:
    assert KIND.name == "nlp"
    assert not KIND.inputs.audio
    assert "transcript" in KIND.inputs.events
    assert KIND.inputs.until == frozenset({"transcribe.done"})


def test_a_bad_intents_file_is_a_configuration_error(tmp_path: Any) -> None:
    bad = tmp_path / "intents.yaml"
    bad.write_text("intents: [just, a, list]\n")
    with pytest.raises(Exception, match="intents"):
        configure(argparse.Namespace(intents=bad))
