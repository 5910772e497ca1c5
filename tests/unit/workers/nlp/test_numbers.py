"""Digit runs in written and spoken transcripts, with offsets into the original text (pure)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.workers.nlp.numbers import DigitRun, spoken_digits
from callstream.workers.nlp.tokens import DIGIT_WORDS, tokenize

SPOKEN = {digit: word for word, digit in DIGIT_WORDS.items()}


def runs(text: str) -> list[tuple[str, str]]:
    """Each run's digits and the text its offsets cover."""
    return [(r.digits, text[r.start : r.end]) for r in spoken_digits(text)]


def say(digits: str) -> str:
    return " ".join(SPOKEN[d] for d in digits)


def test_spoken_card_is_one_run_with_exact_offsets() -> None:
    text = "my card number is four one one one one one one one one one one one one one one one"
    start = text.index("four")
    assert spoken_digits(text) == [DigitRun("4111111111111111", start, len(text))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call me at five five five one two three four five six seven",
         [("5551234567", "five five five one two three four five six seven")]),
        ("nineteen eighty four", [("1984", "nineteen eighty four")]),
        ("room one hundred and five please", [("105", "one hundred and five")]),
        ("twenty one", [("21", "twenty one")]),
        ("it is double five six", [("556", "double five six")]),
        ("triple one two", [("1112", "triple one two")]),
        ("double oh seven", [("007", "double oh seven")]),
        ("four o four", [("404", "four o four")]),
        ("five oh five", [("505", "five oh five")]),
        ("zero five five", [("055", "zero five five")]),
        ("twenty oh five", [("2005", "twenty oh five")]),
        ("four one one one dash two two", [("411122", "four one one one dash two two")]),
        ("four one hyphen two", [("412", "four one hyphen two")]),
        # "eight hundred" before more digits is a toll-free prefix, not 805.
        ("eight hundred five five five one two one two",
         [("8005551212", "eight hundred five five five one two one two")]),
        ("one million", [("1000000", "one million")]),
    ],
)  # fmt: skip
def test_spoken_numbers(text: str, expected: list[tuple[str, str]]) -> None:
    assert runs(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("My card is 4111 1111 1111 1111.", [("4111111111111111", "4111 1111 1111 1111")]),
        ("Call 555-123-4567, thanks.", [("5551234567", "555-123-4567")]),
        ("Call 555.123.4567 now", [("5551234567", "555.123.4567")]),
        ("(555) 123-4567", [("5551234567", "555) 123-4567")]),
        ("+44 20 7946 0958", [("442079460958", "44 20 7946 0958")]),
        ("It's 4111 one one", [("411111", "4111 one one")]),
    ],
)
def test_written_numbers(text: str, expected: list[tuple[str, str]]) -> None:
    assert runs(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("i have two kids and one dog", [("2", "two"), ("1", "one")]),
        ("two and three", [("2", "two"), ("3", "three")]),
        ("five, six", [("5", "five"), ("6", "six")]),  # a comma ends a number
        ("It was 42. 55 more", [("42", "42"), ("55", "55")]),
    ],
)
def test_separate_numbers_stay_separate(text: str, expected: list[tuple[str, str]]) -> None:
    assert runs(text) == expected


@pytest.mark.parametrize(
    "text", ["", "oh i see", "the first of may", "two point five", "hello there", "o k", "j o h n"]
)
def test_no_digits(text: str) -> None:
    assert spoken_digits(text) == []


def test_capitals_and_hyphenated_words() -> None:
    text = "Twenty-One and Forty Two"
    assert runs(text) == [("21", "Twenty-One"), ("42", "Forty Two")]


def test_tokens_keep_offsets() -> None:
    text = "I'm at 555-1234!"
    assert [(t.text, text[t.start : t.end]) for t in tokenize(text)] == [
        ("i'm", "I'm"),
        ("at", "at"),
        ("555", "555"),
        ("1234", "1234"),
    ]


@given(st.text(alphabet="0123456789", min_size=1, max_size=24))
def test_any_digits_spoken_one_by_one_are_one_run(digits: str) -> None:
    text = f"it is {say(digits)} ok"
    start = text.index(SPOKEN[digits[0]])
    assert spoken_digits(text) == [DigitRun(digits, start, len(text) - 3)]


@given(st.text(alphabet="0123456789", min_size=1, max_size=24), st.sampled_from([" ", "-", " - "]))
def test_any_written_groups_are_one_run(digits: str, joiner: str) -> None:
    groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    number = joiner.join(groups)
    text = f"Number: {number}."
    assert spoken_digits(text) == [DigitRun(digits, 8, 8 + len(number))]


WORDS = [*DIGIT_WORDS, "oh", "o", "double", "triple", "twenty", "hundred", "and", "thousand",
         "dash", "my", "is", "first", "point", "a", "I", "4111", "12", "-", ",", ".", "(", ")",
         "+", "for", "to"]  # fmt: skip


@given(st.lists(st.sampled_from(WORDS), max_size=30), st.sampled_from([" ", "  ", "\n"]))
def test_runs_are_ordered_disjoint_digit_spans(words: list[str], space: str) -> None:
    text = space.join(words)
    found = spoken_digits(text)
    for run in found:
        assert run.digits.isdigit()
        assert 0 <= run.start < run.end <= len(text)
        assert text[run.start : run.end] == text[run.start : run.end].strip()
    assert all(a.end <= b.start for a, b in itertools.pairwise(found))


@pytest.mark.parametrize(
    ("text", "runs"),
    [
        # The recogniser wrote "for" for the first "four" of a card number.
        (
            f"my card is for {' '.join(['one'] * 15)}",
            [("4" + "1" * 15, f"for {' '.join(['one'] * 15)}")],
        ),
        (
            "five five five to three four five six",
            [("55523456", "five five five to three four five six")],
        ),
        ("waiting for one hour", [("1", "one")]),  # not among digits read one by one
        ("i went to two stores", [("2", "two")]),
        ("thanks for nothing", []),
    ],
)
def test_words_written_for_digits_count_only_among_digits(
    text: str, runs: list[tuple[str, str]]
) -> None:
    assert [(r.digits, text[r.start : r.end]) for r in spoken_digits(text)] == runs
