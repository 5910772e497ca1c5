"""Sentiment of utterances, and its running level per participant.

VADER (a lexicon of words rated by people, plus rules for negation, intensifiers and "but")
was made for short informal text and needs no model, GPU or training data; it works on a
recogniser's lowercase, unpunctuated words as well as on written text (it loses only the boost
of "!" and capitals, which a recogniser never writes). Scores are VADER's ``compound``, in
[-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

# VADER's own thresholds for its compound score (Hutto & Gilbert, 2014).
POSITIVE_FROM = 0.05
NEGATIVE_TO = -0.05
# Words VADER rates (from social media) that in a contact centre are vocabulary, not feeling:
# "i would like to", "please", "yes"/"no" as answers, "customer care", "technical support",
# "credit card", "interest rate", "social security", "cancel"/"charges"/"pay" as the subject
# of a call. Left in, "i would like to check my balance" scores +0.36 and "no i want to cancel"
# reads as anger.
CALL_CENTRE_NEUTRAL = frozenset(
    {
        "like", "please", "yes", "no", "ok", "okay", "sure", "want", "well", "help", "number",
        "credit", "care", "support", "interest", "security", "secure", "protect", "share",
        "cancel", "charged", "charges", "pay",
    }
)  # fmt: skip
NEGATIVE = "negative"
NEUTRAL = "neutral"
POSITIVE = "positive"


class SentimentScorer:
    """Scores utterances. Make one per worker replica: its lexicon (about 7,500 entries) is
    read from the vaderSentiment package when it is made, never per call. Words in
    ``neutral`` (default :data:`CALL_CENTRE_NEUTRAL`) are taken out of the lexicon."""

    def __init__(self, neutral: Iterable[str] = CALL_CENTRE_NEUTRAL) -> None:
        self._analyzer = SentimentIntensityAnalyzer()
        for word in neutral:
            self._analyzer.lexicon.pop(word.lower(), None)

    def score(self, text: str) -> float:
        """The utterance's sentiment in [-1, 1] (VADER compound); 0.0 for no words."""
        if not text.strip():
            return 0.0
        compound = self._analyzer.polarity_scores(text)["compound"]
        return max(-1.0, min(1.0, float(compound)))

    @staticmethod
    def label(score: float) -> str:
        """``negative`` (≤ -0.05), ``positive`` (≥ 0.05) or ``neutral`` (between)."""
        if score >= POSITIVE_FROM:
            return POSITIVE
        if score <= NEGATIVE_TO:
            return NEGATIVE
        return NEUTRAL


class RollingSentiment:
    """A participant's sentiment so far: an exponentially weighted moving average of their
    utterances' scores, ``value = alpha * score + (1 - alpha) * value``, starting at the first
    score.

    A plain mean of a long call would barely move when a caller turns angry in minute ten;
    with ``alpha`` 0.3 the latest utterance weighs 30% and one from five utterances ago about
    7%, so the level follows the mood of the last few exchanges while one stray word does not
    flip it. Keep one per participant; :meth:`to_state`/:meth:`from_state` carry it in a
    call's state across a failover.
    """

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value = 0.0  # neutral until the first utterance
        self.count = 0  # utterances seen

    def update(self, score: float) -> float:
        """Add an utterance's score (clamped to [-1, 1]); returns the new level."""
        if math.isnan(score):
            raise ValueError("score is NaN")
        score = max(-1.0, min(1.0, score))
        self.value = (
            score if self.count == 0 else self.alpha * score + (1 - self.alpha) * self.value
        )
        self.count += 1
        return self.value

    def to_state(self) -> dict[str, Any]:
        """A JSON-able snapshot, for a call's ``ctx.state``."""
        return {"alpha": self.alpha, "value": self.value, "count": self.count}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RollingSentiment:
        """The level saved by :meth:`to_state`."""
        rolling = cls(float(state["alpha"]))
        rolling.value = float(state["value"])
        rolling.count = int(state["count"])
        return rolling
