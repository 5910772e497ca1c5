"""Words of a transcript with their character offsets, shared by the NLP analysers.

A recogniser's transcript is either spoken form (PocketSphinx: lowercase words, no punctuation,
no digits) or written form (Azure Speech: capitals, punctuation, digits). Every analyser that
reports a span (numbers, PII) works on these tokens so that its offsets point into the text it
was given, never into a normalised copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A word (with inner apostrophes: "i'm", "don't") or a run of written digits. Everything else
# (spaces, punctuation, symbols) lies between tokens and is kept only as a gap.
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+")


@dataclass(frozen=True, slots=True)
class Token:
    """One word or digit group: ``text`` lower-cased, ``start``/``end`` character offsets (end
    exclusive) in the original text."""

    text: str
    start: int
    end: int

    @property
    def is_digits(self) -> bool:
        return self.text.isdigit()


def tokenize(text: str) -> list[Token]:
    """The words and digit groups of ``text``, in order, lower-cased, with their offsets."""
    return [Token(m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


# Spoken single digits. "oh" is a digit only beside other digits (see numbers.py); "o" is a
# spelled letter (j o h n) and never a digit.
DIGIT_WORDS: dict[str, str] = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
