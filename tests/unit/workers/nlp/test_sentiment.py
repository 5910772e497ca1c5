"""Utterance sentiment and its running level (pure)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.workers.nlp.sentiment import RollingSentiment, SentimentScorer


@pytest.fixture(scope="module")
def scorer() -> SentimentScorer:
    return SentimentScorer()


@pytest.mark.parametrize(
    ("text", "label"),
    [
        # As PocketSphinx writes it: lowercase, no punctuation.
        ("this is the worst service i have ever had i am really angry", "negative"),
        ("i am not happy with this", "negative"),
        ("thank you so much that was really helpful", "positive"),
        ("great that solved it", "positive"),
        ("my account number is one two three", "neutral"),
        ("This is the worst service I have ever had.", "negative"),
        # Contact-centre vocabulary VADER would call positive or negative is neutral here.
        ("i would like to check my balance please", "neutral"),
        ("no i want to cancel my credit card", "neutral"),
        ("yes can you help me with technical support", "neutral"),
        ("no that is not good enough", "negative"),
    ],
)
def test_labels(scorer: SentimentScorer, text: str, label: str) -> None:
    assert scorer.label(scorer.score(text)) == label


def test_vader_lexicon_unchanged_when_asked() -> None:
    plain = SentimentScorer(neutral=())
    assert plain.label(plain.score("i would like to check my balance")) == "positive"


def test_score_range_and_empty(scorer: SentimentScorer) -> None:
    assert scorer.score("") == 0.0
    assert scorer.score("   ") == 0.0
    assert -1.0 <= scorer.score("terrible awful horrible hate hate hate") < -0.9


@pytest.mark.parametrize(
    ("score", "label"),
    [(-1.0, "negative"), (-0.05, "negative"), (-0.049, "neutral"), (0.0, "neutral"),
     (0.049, "neutral"), (0.05, "positive"), (1.0, "positive")],
)  # fmt: skip
def test_label_thresholds(score: float, label: str) -> None:
    assert SentimentScorer.label(score) == label


def test_rolling_starts_at_first_score_then_weights_recent_by_alpha() -> None:
    rolling = RollingSentiment()
    assert rolling.value == 0.0
    assert rolling.update(0.5) == 0.5
    assert rolling.update(-0.5) == pytest.approx(0.3 * -0.5 + 0.7 * 0.5)
    assert rolling.count == 2


def test_rolling_follows_a_caller_who_turns_angry() -> None:
    rolling = RollingSentiment()
    for _ in range(20):
        rolling.update(0.6)
    for _ in range(3):
        level = rolling.update(-0.8)
    assert SentimentScorer.label(level) == "negative"


def test_rolling_state_round_trip() -> None:
    rolling = RollingSentiment(alpha=0.5)
    rolling.update(0.4)
    rolling.update(-0.2)
    again = RollingSentiment.from_state(rolling.to_state())
    assert (again.alpha, again.value, again.count) == (0.5, rolling.value, 2)
    assert again.update(1.0) == rolling.update(1.0)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_rolling_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        RollingSentiment(alpha)


def test_rolling_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        RollingSentiment().update(math.nan)


@given(st.lists(st.floats(min_value=-5, max_value=5), min_size=1, max_size=50))
def test_rolling_stays_in_range(scores: list[float]) -> None:
    rolling = RollingSentiment()
    for score in scores:
        assert -1.0 <= rolling.update(score) <= 1.0
