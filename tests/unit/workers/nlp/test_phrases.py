"""Key phrases of utterances and of a call (pure)."""

from __future__ import annotations

import pytest

from callstream.workers.nlp.phrases import KeyPhrases, merge_ranked

COMPLAINT = (
    "i would like to cancel my broadband subscription because the internet keeps dropping "
    "every evening"
)


@pytest.fixture(scope="module")
def phrases() -> KeyPhrases:
    return KeyPhrases()


def test_ranked_phrases_of_a_spoken_utterance(phrases: KeyPhrases) -> None:
    found = phrases.extract(COMPLAINT)
    assert 1 <= len(found) <= 5
    assert "broadband subscription" in found
    assert any("dropping" in p for p in found)
    assert all(1 <= len(p.split()) <= 3 and p == p.lower() for p in found)


def test_top_limits_and_no_phrase_within_a_better_one(phrases: KeyPhrases) -> None:
    found = phrases.extract(COMPLAINT, top=3)
    assert len(found) == 3
    assert len(set(found)) == 3
    words = [set(p.split()) for p in found]
    for i, later in enumerate(words):
        assert not any(later <= earlier for earlier in words[:i])


def test_written_form_gives_lowercase_phrases(phrases: KeyPhrases) -> None:
    found = phrases.extract("I'd like to cancel my Broadband subscription. It keeps dropping!")
    assert "broadband subscription" in found


@pytest.mark.parametrize("text", ["", "   ", "a", "hi", "yes", "ok thanks", "!!!", "the the"])
def test_short_or_empty_text_has_no_phrases(phrases: KeyPhrases, text: str) -> None:
    assert phrases.extract(text) == []


def test_zero_top(phrases: KeyPhrases) -> None:
    assert phrases.extract(COMPLAINT, top=0) == []


def test_redaction_placeholders_are_not_phrases(phrases: KeyPhrases) -> None:
    found = phrases.extract("my card number is [CARD_NUMBER] and my broadband keeps dropping")
    assert found
    assert not any("card_number" in p for p in found)


def test_merge_ranks_by_frequency_then_best_rank() -> None:
    lists = [
        ["broadband", "refund", "router"],
        ["Router", "engineer visit"],
        ["router", "refund"],
        ["billing"],
    ]
    # router in 3 lists, refund in 2, then the once-seen by best rank (0 beats 1), then order.
    assert merge_ranked(lists, top=4) == ["router", "refund", "broadband", "billing"]


def test_merge_counts_a_phrase_once_per_list_and_handles_nothing() -> None:
    assert merge_ranked([["a", "a", "b"], ["b"]], top=5) == ["b", "a"]
    assert merge_ranked([], top=5) == []
    assert merge_ranked([["a"]], top=0) == []
