"""Runs of digits in a transcript, written or spoken, with their offsets in the original text.

A card, phone or account number reaches us in two shapes: written by Azure Speech
("4111 1111 1111 1111", "555-123-4567") or spoken, as PocketSphinx writes everything ("four one
one one ...", "double five", "nineteen eighty four", "one hundred and five"). PII detection
needs the digits *and* where they were in the text (to redact them), so this module never
rewrites the text: it finds numbers on :mod:`tokens <callstream.workers.nlp.tokens>` and maps
each back to its first and last token.

The number grammar ("twenty one", "one hundred and five", "zero zero seven") is text2num's
(``find_numbers`` on our tokens, which reports token positions); what is ours is what callers
of a call centre say around it: "oh" for zero, "double"/"triple", digit groups joined by
spaces, hyphens or "dash", "eight hundred" as a phone prefix followed by more digits, and
the words a recogniser writes for a digit it heard ("for", "to", "won", "ate") when they stand
among digits read one by one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from text_to_num import find_numbers

from callstream.workers.nlp.tokens import DIGIT_WORDS, Token, tokenize

_REPEAT = {"double": 2, "triple": 3}
_DASH_WORDS = frozenset({"dash", "hyphen"})
_ZERO_LETTERS = frozenset({"oh", "o"})
# Words a recogniser writes for a digit it heard ("for one one one" for "four one one one").
_HOMOPHONES = {
    "for": "four",
    "fore": "four",
    "to": "two",
    "too": "two",
    "won": "one",
    "ate": "eight",
}
# What may separate two digit groups of one run: spaces and a hyphen ("555-123-4567"), a dot
# with no space ("555.123.4567"), or the brackets of an area code ("(555) 123-4567").
_JOINER = re.compile(r"\s*[-‐‑–—]?\s*|\.|\)\s*-?\s*|\s*\(")
# Between two words of one spoken number: spaces or a hyphen ("twenty-one"); anything else
# (a comma, a full stop) ends the number.
_WORD_GAP = re.compile(r"\s*-?\s*")


@dataclass(frozen=True, slots=True)
class DigitRun:
    """A run of digits: ``digits`` as written or spoken, ``start``/``end`` the character offsets
    (end exclusive) of the words or digits it came from in the original text."""

    digits: str
    start: int
    end: int


@dataclass(slots=True)
class _Piece:
    """Digits from tokens ``first`` .. ``last`` (inclusive), before joining into runs."""

    digits: str
    first: int
    last: int


class _T2NToken:
    """A token as text2num's ``find_numbers`` wants it (its ``Token`` protocol)."""

    __slots__ = ("_separated", "_text")

    def __init__(self, text: str, separated: bool) -> None:
        self._text = text
        self._separated = separated

    def text(self) -> str:
        return self._text

    def nt_separated(self, previous: object) -> bool:
        return self._separated

    def not_a_number_part(self) -> bool:
        return False


def spoken_digits(text: str) -> list[DigitRun]:
    """Every run of digits in ``text``, in order: written ("4111 1111"), spoken digit by digit
    ("four one one one", "oh", "double five"), or spoken as numbers ("twenty one" → 21,
    "nineteen eighty four" → 1984). Groups separated only by spaces, hyphens or "dash" are one
    run. Ordinals ("first") and decimals ("two point five") are not digits."""
    tokens = tokenize(text)
    if not tokens:
        return []
    pieces = _pieces(text, tokens)
    return _join(text, tokens, pieces)


def _pieces(text: str, tokens: list[Token]) -> list[_Piece]:
    """Numbers found token by token, each with the tokens it spans."""
    words = [_number_word(tokens, i) for i in range(len(tokens))]
    t2n = [
        _T2NToken(
            word,
            i > 0 and _WORD_GAP.fullmatch(text, tokens[i - 1].end, tokens[i].start) is None,
        )
        for i, word in enumerate(words)
    ]
    pieces: list[_Piece] = []
    for occurrence in find_numbers(t2n, "en", 0.0):
        digits: str = occurrence.text
        if occurrence.is_ordinal or not digits.isdigit():
            continue
        first, last = occurrence.start, occurrence.end - 1
        # "eight hundred five five five ...": text2num reads 805, a caller means 800 and then
        # the digits of the number.
        nxt = last + 1
        if (
            last - first >= 2
            and words[last - 1] == "hundred"
            and words[last] in DIGIT_WORDS
            and nxt < len(words)
            and words[nxt] in DIGIT_WORDS
            and digits.endswith("0" + DIGIT_WORDS[words[last]])
        ):
            pieces.append(_Piece(digits[:-1] + "0", first, last - 1))
            pieces.append(_Piece(DIGIT_WORDS[words[last]], last, last))
        else:
            pieces.append(_Piece(digits, first, last))
    pieces.extend(_Piece(t.text, i, i) for i, t in enumerate(tokens) if t.is_digits)
    pieces.sort(key=lambda p: p.first)
    for piece in pieces:  # "double five" → 55, "triple zero seven" → 0007
        if piece.first == 0:
            continue
        times = _REPEAT.get(words[piece.first - 1])
        head = tokens[piece.first]
        if times is None or not (
            words[piece.first] in DIGIT_WORDS or (head.is_digits and len(head.text) == 1)
        ):
            continue
        if not text[tokens[piece.first - 1].end : tokens[piece.first].start].isspace():
            continue
        piece.digits = piece.digits[0] * (times - 1) + piece.digits
        piece.first -= 1
    return pieces


def _number_word(tokens: list[Token], i: int) -> str:
    """The token's text for text2num: written digits hidden (we take them as they are), and
    "oh" or "o" read as zero only beside a digit ("five oh five", "double o seven"); elsewhere
    "o" is a spelled letter ("j o h n") and "oh" an interjection."""
    word = tokens[i].text
    if word.isdigit():
        return "#"
    if word in _ZERO_LETTERS:
        beside = (tokens[j].text for j in (i - 1, i + 1) if 0 <= j < len(tokens))
        return "zero" if any(_digit_like(w) for w in beside) else "-"
    if word in _HOMOPHONES:
        # A digit only within digits read one by one: followed by two digit words, or between
        # two ("waiting for one hour" keeps its "for").
        after = [tokens[j].text for j in (i + 1, i + 2) if j < len(tokens)]
        before = tokens[i - 1].text if i > 0 else ""
        if (len(after) == 2 and all(w in DIGIT_WORDS for w in after)) or (
            before in DIGIT_WORDS and after[:1] and after[0] in DIGIT_WORDS
        ):
            return _HOMOPHONES[word]
    return word


def _digit_like(word: str) -> bool:
    return word in DIGIT_WORDS or word.isdigit() or word in _REPEAT or word == "oh"


def _join(text: str, tokens: list[Token], pieces: list[_Piece]) -> list[DigitRun]:
    """Join pieces that follow each other with nothing but a joiner between them."""
    runs: list[DigitRun] = []
    current: _Piece | None = None
    for piece in pieces:
        if current is not None and _adjacent(text, tokens, current, piece):
            current = _Piece(current.digits + piece.digits, current.first, piece.last)
            continue
        if current is not None:
            runs.append(_run(tokens, current))
        current = piece
    if current is not None:
        runs.append(_run(tokens, current))
    return runs


def _adjacent(text: str, tokens: list[Token], a: _Piece, b: _Piece) -> bool:
    if b.first == a.last + 1:
        return _JOINER.fullmatch(text, tokens[a.last].end, tokens[b.first].start) is not None
    if b.first == a.last + 2 and tokens[a.last + 1].text in _DASH_WORDS:  # "four one dash two"
        dash = tokens[a.last + 1]
        return (
            text[tokens[a.last].end : dash.start].isspace()
            and text[dash.end : tokens[b.first].start].isspace()
        )
    return False


def _run(tokens: list[Token], piece: _Piece) -> DigitRun:
    return DigitRun(piece.digits, tokens[piece.first].start, tokens[piece.last].end)
