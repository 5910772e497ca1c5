"""A call's summary from its utterances (pure)."""

from __future__ import annotations

import json

from callstream.workers.nlp.summary import TICKS_PER_S, CallSummary, Utterance

CALLER, AGENT = "4:+14255550123", "8:acs:agent"


def utt(key: str, who: str, start_s: float, length_s: float, sentiment: float) -> Utterance:
    return Utterance(
        f"c:transcript:0:{key}",
        who,
        int(start_s * TICKS_PER_S),
        int(length_s * TICKS_PER_S),
        sentiment,
    )


def conversation() -> CallSummary:
    """A 20 s call: the caller complains, the agent answers (and is interrupted once)."""
    summary = CallSummary()
    summary.started_ms, summary.ended_ms = 1_000, 21_000
    summary.add(utt("1", CALLER, 1.0, 3.0, -0.6), ["late fee"], [("complaint", 0.9)])
    summary.add(utt("2", CALLER, 4.5, 1.0, -0.4), ["late fee", "refund"])
    summary.add(utt("3", AGENT, 6.0, 4.0, 0.2), ["refund"])
    summary.add(utt("4", CALLER, 9.0, 2.0, 0.1))  # while the agent still speaks
    summary.add(utt("5", AGENT, 12.0, 3.0, 0.6), [], [("complaint", 0.8), ("refund", 0.85)])
    summary.dtmf("c:dtmf:1", "4")
    summary.dtmf("c:dtmf:2", "2")
    return summary


def test_the_summary_counts_talk_turns_interruptions_and_sentiment_per_participant() -> None:
    data = conversation().summary()
    assert data["participants"] == {
        CALLER: {"talk_time_s": 6.0, "turns": 2, "interruptions": 1, "mean_sentiment": -0.3},
        AGENT: {"talk_time_s": 7.0, "turns": 2, "interruptions": 0, "mean_sentiment": 0.4},
    }
    assert data["duration_s"] == 20.0
    assert data["utterances"] == 5
    # Speech covers 1-4, 4.5-5.5, 6-11 (the overlap counted once), 12-15: 12 s of 20.
    assert data["silence_ratio"] == 0.4
    assert data["sentiment_trend"] == {
        "direction": "improving",
        "first_half": -0.5,
        "second_half": 0.3,
    }
    assert data["key_phrases"] == ["late fee", "refund"]
    assert data["intents"] == [
        {"name": "complaint", "score": 0.9, "count": 2, "first_utterance": "c:transcript:0:1"},
        {"name": "refund", "score": 0.85, "count": 1, "first_utterance": "c:transcript:0:5"},
    ]
    assert (data["dtmf"], data["dtmf_count"]) == ("42", 2)


def test_the_summary_survives_its_state_and_counts_nothing_twice() -> None:
    """A replica that takes the call over restores the state (JSON) and is handed the
    utterances after the checkpoint again: they are not counted again."""
    before = conversation()
    restored = CallSummary(json.loads(json.dumps(before.state())))
    assert not restored.add(utt("5", AGENT, 12.0, 3.0, 0.6), [], [("complaint", 0.8)])
    restored.dtmf("c:dtmf:2", "2")
    assert restored.summary() == before.summary()


def test_redaction_mode_shows_how_many_keys_not_which() -> None:
    data = conversation().summary(show_tones=False)
    assert (data["dtmf"], data["dtmf_count"]) == (None, 2)


def test_an_empty_call_has_a_summary_too() -> None:
    summary = CallSummary()
    summary.started_ms, summary.ended_ms = 0, 5_000
    data = summary.summary()
    assert data["participants"] == {}
    assert data["silence_ratio"] == 1.0
    assert data["sentiment_trend"]["direction"] is None
    assert (data["key_phrases"], data["intents"], data["dtmf"]) == ([], [], "")
