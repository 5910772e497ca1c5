"""Personal data in spoken and written transcripts, and its redaction (pure)."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum import luhn

from callstream.workers.nlp.pii import Entity, find_pii, redact
from callstream.workers.nlp.tokens import DIGIT_WORDS

SPOKEN = {digit: word for word, digit in DIGIT_WORDS.items()}


def say(digits: str) -> str:
    return " ".join(SPOKEN[d] for d in digits)


def found(text: str, region: str = "US") -> list[tuple[str, str]]:
    return [(e.type, text[e.start : e.end]) for e in find_pii(text, region=region)]


def test_spoken_card_number() -> None:
    text = "my card number is four one one one one one one one one one one one one one one one"
    assert find_pii(text) == [Entity("card_number", text.index("four"), len(text))]
    assert redact(text, find_pii(text)) == "my card number is [CARD_NUMBER]"


def test_one_digit_off_is_not_a_card_but_still_digits() -> None:
    text = "my card number is four one one one one one one one one one one one one one one two"
    assert found(text) == [("digits", text[18:])]


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("my card number is four one one one one one one one one one one one one one one one",
         "my card number is [CARD_NUMBER]"),
        ("My card is 4111 1111 1111 1111.", "My card is [CARD_NUMBER]."),
        ("my email is john at example dot com", "my email is [EMAIL]"),
        ("it is j o h n dot doe at gmail dot com thanks", "it is [EMAIL] thanks"),
        ("Send it to john.doe@example.com, please.", "Send it to [EMAIL], please."),
        ("email me at john two three at gmail dot com", "email me at [EMAIL]"),
        ("mail acme dash shop at big dash company dot co dot uk", "mail [EMAIL]"),
        ("call me at five five five one two three four five six seven",
         "call me at [PHONE_NUMBER]"),
        ("five five five two three four five six seven eight", "[PHONE_NUMBER]"),
        ("Call 555-123-4567 or (555) 123-4567, thanks.",
         "Call [PHONE_NUMBER] or [PHONE_NUMBER], thanks."),
        ("call +44 20 7946 0958 now", "call [PHONE_NUMBER] now"),
        ("plus four four two zero seven nine four six zero nine five eight", "[PHONE_NUMBER]"),
        ("my phone number is five five five one two three four",
         "my phone number is [PHONE_NUMBER]"),
        ("eight hundred five five five one two one two", "[PHONE_NUMBER]"),
        ("My SSN is 123-45-6789.", "My SSN is [SSN]."),
        ("my social security number is one two three four five six seven eight nine",
         "my social security number is [SSN]"),
        ("GB82 WEST 1234 5698 7654 32 is my IBAN", "[IBAN] is my IBAN"),
        ("my iban is g b eight two w e s t one two three four five six nine eight seven six five "
         "four three two thanks", "my iban is [IBAN] thanks"),
        ("my account number is one two three four five six seven eight nine zero",
         "my account number is [DIGITS]"),
        ("order one two three four five six", "order [DIGITS]"),
        ("card four one one one one one one one one one one one one one one one and phone five "
         "five five one two three four five six seven",
         "card [CARD_NUMBER] and phone [PHONE_NUMBER]"),
    ],
)  # fmt: skip
def test_redaction(text: str, redacted: str) -> None:
    assert redact(text, find_pii(text)) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "",
        "i have two kids and one dog",
        "it cost two hundred thousand dollars",  # an amount, not an identifier
        "i was there in nineteen eighty four",
        "i am at the office dot com",  # "the" is no address
        "call me at five",
        "the meeting is at ten thirty",
        "i have a question about my bill",
        "it is one two three four five",  # five digits: too short to say
    ],
)
def test_nothing_personal(text: str) -> None:
    assert find_pii(text) == []


def test_nine_digits_are_an_ssn_only_when_said_to_be() -> None:
    nine = "one two three four five six seven eight nine"
    assert found(f"my s s n is {nine}") == [("ssn", nine)]
    assert found(f"the code is {nine}") == [("digits", nine)]
    # 666 is never issued: not an SSN, however introduced.
    # Eight digits are no SSN, but long enough to redact.
    eight = "one two three four five six seven eight"
    assert found(f"my ssn is {eight}") == [("digits", eight)]
    bad = "six six six one two three four five six"
    assert found(f"my social is {bad}") == [("digits", bad)]


def test_possible_phone_with_account_context_is_digits() -> None:
    text = "my account number is five five five two three four five six seven eight"
    assert [e.type for e in find_pii(text)] == ["digits"]


def test_invalid_iban_is_not_an_iban() -> None:
    text = "GB83 WEST 1234 5698 7654 32"
    assert [e.type for e in find_pii(text)] != ["iban"]


def test_region_reads_national_numbers() -> None:
    text = "ring me on 020 7946 0958"
    assert found(text, region="GB") == [("phone_number", "020 7946 0958")]


def test_most_specific_type_wins_overlaps() -> None:
    # The digits are also a possible phone number's length; the Luhn check makes it a card.
    text = "4111 1111 1111 1111"
    assert found(text) == [("card_number", text)]
    # Digits inside a spoken address belong to the address.
    text = "it's john one two three four five six at gmail dot com"
    assert found(text) == [("email", text[5:])]


def test_redact_rejects_overlapping_or_foreign_spans() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        redact("abcdef", [Entity("digits", 0, 3), Entity("email", 2, 4)])
    with pytest.raises(ValueError, match="not a span"):
        redact("abc", [Entity("digits", 1, 9)])


def test_redact_accepts_entities_in_any_order() -> None:
    assert redact("a 1 b 2", [Entity("x", 6, 7), Entity("y", 2, 3)]) == "a [Y] b [X]"


def luhn_number(body: str) -> str:
    return body + luhn.calc_check_digit(body)


@given(
    st.text(alphabet="0123456789", min_size=15, max_size=15).filter(lambda s: s[0] != "0"),
    st.booleans(),
)
def test_any_luhn_card_is_found_spoken_or_written(body: str, spoken: bool) -> None:
    card = luhn_number(body)
    number = say(card) if spoken else " ".join(card[i : i + 4] for i in range(0, 16, 4))
    text = f"my card is {number} thanks"
    assert redact(text, find_pii(text)) == "my card is [CARD_NUMBER] thanks"


SENTENCE_WORDS = [*DIGIT_WORDS, "oh", "double", "at", "dot", "com", "gmail", "john", "j", "n",
                  "plus", "my", "card", "phone", "social", "is", "and", "4111", "555", "-", ".",
                  "@", "+", "(", ")", "thousand", "GB82", "WEST"]  # fmt: skip


@given(st.lists(st.sampled_from(SENTENCE_WORDS), max_size=40))
def test_findings_are_ordered_disjoint_spans_and_redaction_removes_their_digits(
    words: list[str],
) -> None:
    text = " ".join(words)
    entities = find_pii(text)
    assert all(0 <= e.start < e.end <= len(text) for e in entities)
    assert all(a.end <= b.start for a, b in itertools.pairwise(entities))
    redacted = redact(text, entities)
    for entity in entities:
        assert f"[{entity.type.upper()}]" in redacted
    # What is left holds no run of digits long enough to have been worth redacting.
    assert not any(len(d) >= 13 and luhn.is_valid(d) for d in re.findall(r"\d+", redacted))
