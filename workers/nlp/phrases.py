"""Key phrases of utterances and of a whole call.

YAKE ranks a text's candidate n-grams by statistics of that one text (position, frequency,
spread, casing, how many different words surround them): no corpus, model or training, so it
works on any domain's vocabulary and on a recogniser's lowercase words. It is pure Python; one
extractor is made per result size and reused (making one costs more than extracting).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import yake

MAX_WORDS = 3  # longest phrase, in words
DEDUP_LIMIT = 0.9  # YAKE's similarity above which a lower-ranked candidate is dropped
# Redaction placeholders ("[CARD_NUMBER]", see pii.redact) are not phrases: they become breaks.
_PLACEHOLDER = re.compile(r"\[[A-Z_]+\]")


class KeyPhrases:
    """Ranked key phrases of English text (YAKE, phrases of one to three words). Make one per
    worker replica and reuse it."""

    def __init__(self) -> None:
        self._extractors: dict[int, yake.KeywordExtractor] = {}

    def extract(self, text: str, top: int = 5) -> list[str]:
        """Up to ``top`` phrases of ``text``, best first, lower-cased. A phrase whose words all
        appear in a better one is left out ("evening" after "dropping every evening"). Text
        too short to rank (no word of three letters or more) gives []."""
        if top <= 0:
            return []
        text = _PLACEHOLDER.sub(",", text)
        if not any(len(word) >= 3 for word in re.findall(r"\w+", text)):
            return []
        extractor = self._extractors.get(top)
        if extractor is None:
            # Ask for a few more than wanted: the containment filter below may drop some.
            extractor = yake.KeywordExtractor(
                lan="en", n=MAX_WORDS, dedup_lim=DEDUP_LIMIT, top=top * 2
            )
            self._extractors[top] = extractor
        phrases: list[str] = []
        kept_words: list[set[str]] = []
        for candidate, _ in extractor.extract_keywords(text):
            phrase = " ".join(candidate.lower().split())
            words = set(phrase.split())
            if any(words <= other for other in kept_words):
                continue
            phrases.append(phrase)
            kept_words.append(words)
            if len(phrases) == top:
                break
        return phrases


def merge_ranked(lists: Iterable[Sequence[str]], top: int) -> list[str]:
    """A call's top phrases from its utterances' ranked lists: most frequent first (in how many
    lists a phrase appears, case-insensitively), ties broken by the best rank it had in any
    list, then by which came first. Frequency leads because a subject the caller comes back
    to is what the call is about; within one utterance YAKE's rank is all we know."""
    stats: dict[str, tuple[int, int, int]] = {}  # phrase → (count, best rank, first seen)
    seen = 0
    for ranked in lists:
        for rank, raw in enumerate(dict.fromkeys(p.lower().strip() for p in ranked)):
            if not raw:
                continue
            count, best, first = stats.get(raw, (0, rank, seen))
            stats[raw] = (count + 1, min(best, rank), first)
            seen += 1
    ordered = sorted(stats, key=lambda p: (-stats[p][0], stats[p][1], stats[p][2]))
    return ordered[: max(top, 0)]
