"""What a caller wants, from a list of intents given by examples and keywords.

Intents are data, not code: a YAML file of example utterances (and optional keywords) per
intent, :func:`load_intents`, with a contact-centre set built in (:func:`default_intents`).

:class:`IntentMatcher` scores an utterance against every example by how much of the example's
content the utterance contains: the example's content words (filler like "i want to",
"please" dropped, inflections cut by a small suffix stemmer: cancelling, cancelled,
cancellation → cancel) are each looked up among the utterance's words with rapidfuzz's edit
similarity, so word order, extra words and small recognition errors ("subscripton") cost
little, while a short utterance that shares only filler or one word of an example ("i want",
"cancel the order") scores low. A keyword present in the utterance gives a fixed score.

Why not ``fuzz.token_set_ratio`` on whole sentences: it scores 100 whenever one side's words
are a subset of the other's, so "i want" would match "i want to cancel my subscription"
perfectly. Coverage of the example by the utterance is asymmetric on purpose.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml
from rapidfuzz import fuzz, process

DEFAULT_THRESHOLD = 0.75
KEYWORD_SCORE = 0.8  # an intent whose keyword the utterance contains
SINGLE_WORD_SCORE = 0.8  # the most an example with one content word can score: it is a keyword
WORD_SIMILARITY = 85  # rapidfuzz ratio (0-100) from which two stems are the same word
EXACT_UP_TO = 4  # stems this short must match exactly ("end" is not "send")

# Filler that says nothing about what the caller wants. Negations and question words ("not",
# "where", "what") are kept: "where is my order" is not "i want to order".
_FILLER = """
    i me my mine myself we us our you your yours it its itself he him his she her they them
    their this that these those there here is am are was were be been being have has had
    having do does did doing a an the and or but if of at by for with about to from in on
    into onto up out off over so than too very can could would should will shall may might
    must want wanted wants like would need needs needed please just really also some any
    get got getting id im ive ill youre dont cant wont oh um uh er erm well okay ok just
    go going gonna wanna let lets keep keeps kept
"""
STOPWORDS = frozenset(_FILLER.split())

_NON_WORD = re.compile(r"[^a-z0-9]+")
_SUFFIXES = ("ations", "ation", "ings", "ing", "ied", "ies", "ed", "es", "s", "e")
_VOWELS = frozenset("aeiouy")


@dataclass(frozen=True, slots=True)
class Intent:
    """An intent: its ``name``, example utterances and keywords (either may be empty, not
    both)."""

    name: str
    examples: tuple[str, ...]
    keywords: tuple[str, ...] = ()


def load_intents(text: str) -> list[Intent]:
    """Intents from YAML of the shape::

        intents:
          cancel_subscription:
            examples: ["i want to cancel my subscription", "please end my plan"]
          billing_question:
            examples: ["i have a question about my bill"]
            keywords: ["invoice", "charge"]

    Raises ``ValueError`` naming the problem (and the intent) for anything else.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"intents file is not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or "intents" not in document:
        raise ValueError(
            f"intents file must be a mapping with an 'intents' key, got {_describe(document)}"
        )
    extra = sorted(str(k) for k in document if k != "intents")
    if extra:
        raise ValueError(f"intents file has unknown top-level keys {extra}: only 'intents'")
    entries = document["intents"]
    if not isinstance(entries, dict) or not entries:
        raise ValueError(
            f"'intents' must be a mapping of intent names to intents, got {_describe(entries)}"
        )
    intents: list[Intent] = []
    for name, body in entries.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"intent names must be non-empty strings, got {name!r}")
        if not isinstance(body, dict):
            raise ValueError(
                f"intent {name!r} must be a mapping with 'examples' and/or 'keywords', "
                f"got {_describe(body)}"
            )
        unknown = sorted(str(k) for k in body if k not in {"examples", "keywords"})
        if unknown:
            raise ValueError(
                f"intent {name!r} has unknown keys {unknown}: only 'examples' and 'keywords'"
            )
        examples = _strings(name, "examples", body.get("examples"))
        keywords = _strings(name, "keywords", body.get("keywords"))
        if not examples and not keywords:
            raise ValueError(f"intent {name!r} has no examples and no keywords")
        intents.append(Intent(name, examples, keywords))
    return intents


def _strings(name: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(
            f"intent {name!r}: {key} must be a list of strings, got {_describe(value)}"
        )
    for item in value:
        if not isinstance(item, str):
            raise ValueError(
                f"intent {name!r}: {key} must be strings, got {_describe(item)} ({item!r})"
            )
        if not _words(item):
            raise ValueError(f"intent {name!r}: {key} entry {item!r} has no words")
    return tuple(item.strip() for item in value)


def _describe(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def default_intents() -> list[Intent]:
    """The built-in contact-centre intents (``default_intents.yaml`` in this package)."""
    resource = importlib.resources.files("callstream.workers.nlp") / "default_intents.yaml"
    return load_intents(resource.read_text(encoding="utf-8"))


def stem(word: str) -> str:
    """A crude English stem: one common suffix cut, then a doubled final consonant undone
    (cancelling → cancell → cancel). Not a linguist's stemmer: both sides of a comparison go
    through it, so it only has to map a word's forms to the same string."""
    if len(word) > 3:
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                if suffix == "s" and word.endswith(("ss", "us", "is")):
                    continue
                word = word[: -len(suffix)] + ("y" if suffix in {"ied", "ies"} else "")
                break
    if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in _VOWELS:
        word = word[:-1]
    return word


def _words(text: str) -> list[str]:
    """Lower-cased words, apostrophes dropped ("don't" → "dont"), other punctuation a break."""
    return _NON_WORD.sub(" ", text.lower().replace("'", "").replace("’", "")).split()


def content_stems(text: str) -> list[str]:
    """The stems of ``text``'s content words, in order, without repeats; all its words' stems
    if every word is filler (an example "hello" still means something)."""
    words = _words(text)
    content = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(stem(w) for w in content))


class IntentMatcher:
    """Scores utterances against intents. Make one per worker replica (it prepares every
    example once) and call :meth:`match` per utterance.

    An example's score is the mean, over its content stems, of the best similarity of that
    stem to one of the utterance's (1.0 equal, down to 0.85 for a letter or two off, else 0),
    capped at :data:`SINGLE_WORD_SCORE` for a one-word example; an intent's score is its best
    example's, or :data:`KEYWORD_SCORE` when every word of one of its keywords is present,
    whichever is higher.
    """

    def __init__(self, intents: Iterable[Intent], threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.intents = list(intents)
        names = [intent.name for intent in self.intents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"intents named more than once: {duplicates}")
        # Every stem of every example and keyword once: one similarity matrix per utterance,
        # then every example's coverage is one matrix product.
        index: dict[str, int] = {}
        examples: list[list[int]] = []
        keywords: list[list[int]] = []
        example_owner: list[int] = []
        keyword_owner: list[int] = []
        for owner, intent in enumerate(self.intents):
            for text, rows, owners in (
                *((e, examples, example_owner) for e in intent.examples),
                *((k, keywords, keyword_owner) for k in intent.keywords),
            ):
                stems = content_stems(text)
                rows.append([index.setdefault(s, len(index)) for s in stems])
                owners.append(owner)
        self._index = index
        self._vocab = list(index)
        self._short = np.array([len(s) <= EXACT_UP_TO for s in self._vocab], dtype=bool)
        self._coverage = _weights(examples, len(index))  # examples × stems, rows sum to 1
        self._cap = np.array([SINGLE_WORD_SCORE if len(r) == 1 else 1.0 for r in examples])
        self._needed = _weights(keywords, len(index))  # keywords × stems, rows sum to 1
        self._example_owner = np.array(example_owner, dtype=np.intp)
        self._keyword_owner = np.array(keyword_owner, dtype=np.intp)

    def match(self, text: str) -> list[tuple[str, float]]:
        """The intents ``text`` expresses with a score ≥ the threshold, best first (ties by
        name), scores in [0, 1]."""
        found = [(name, s) for name, s in self.scores(text).items() if s >= self.threshold]
        return sorted(found, key=lambda item: (-item[1], item[0]))

    def scores(self, text: str) -> dict[str, float]:
        """Every intent's score for ``text`` (0.0 for no resemblance)."""
        best = self._best_similarity(content_stems(text))
        per_intent = np.zeros(len(self.intents))
        if len(self._example_owner):
            example_scores = np.minimum(self._coverage @ best, self._cap)
            np.maximum.at(per_intent, self._example_owner, example_scores)
        if len(self._keyword_owner):
            # A keyword is present when all its stems are (its row of present stems sums to 1).
            present = self._needed @ (best > 0).astype(np.float64) > 1.0 - 1e-9
            np.maximum.at(per_intent, self._keyword_owner[present], KEYWORD_SCORE)
        return {
            intent.name: round(float(score), 4)
            for intent, score in zip(self.intents, per_intent, strict=True)
        }

    def _best_similarity(self, stems: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float64]]:
        """For each stem of the vocabulary, its best similarity in [0, 1] to one of ``stems``
        (0 below :data:`WORD_SIMILARITY`; short stems count only when equal)."""
        if not stems or not self._vocab:
            return np.zeros(len(self._vocab))
        matrix = process.cdist(
            self._vocab, stems, scorer=fuzz.ratio, score_cutoff=WORD_SIMILARITY, dtype=np.float64
        )
        best = np.asarray(matrix.max(axis=1), dtype=np.float64) / 100.0
        best[self._short] = 0.0
        for s in stems:
            row = self._index.get(s)
            if row is not None:
                best[row] = 1.0
        return best


def _weights(rows: list[list[int]], width: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A matrix with one row per list of column indices, each row's weight spread evenly."""
    matrix = np.zeros((len(rows), width))
    for i, columns in enumerate(rows):
        matrix[i, columns] = 1.0 / len(columns)
    return matrix
