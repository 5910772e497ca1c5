"""Intents from YAML, and matching utterances to them (pure)."""

from __future__ import annotations

import pytest

from callstream.workers.nlp.intents import (
    Intent,
    IntentMatcher,
    content_stems,
    default_intents,
    load_intents,
    stem,
)

EXAMPLE = """
intents:
  cancel_subscription:
    examples: ["i want to cancel my subscription", "please end my plan"]
  billing_question:
    examples: ["i have a question about my bill"]
    keywords: ["invoice", "charge"]
"""


@pytest.fixture(scope="module")
def matcher() -> IntentMatcher:
    return IntentMatcher(load_intents(EXAMPLE))


@pytest.fixture(scope="module")
def defaults() -> IntentMatcher:
    return IntentMatcher(default_intents())


def test_load_intents() -> None:
    assert load_intents(EXAMPLE) == [
        Intent(
            "cancel_subscription",
            ("i want to cancel my subscription", "please end my plan"),
        ),
        Intent("billing_question", ("i have a question about my bill",), ("invoice", "charge")),
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("intents: [", "not valid YAML"),
        ("", "must be a mapping with an 'intents' key, got nothing"),
        ("- a\n- b", "must be a mapping with an 'intents' key, got list"),
        ("intents: {}\nextra: 1", "unknown top-level keys ['extra']"),
        ("intents: []", "'intents' must be a mapping of intent names"),
        ("intents:\n  x: [a, b]", "intent 'x' must be a mapping"),
        ("intents:\n  x: {}", "intent 'x' has no examples and no keywords"),
        ("intents:\n  x:\n    examples: []", "intent 'x' has no examples and no keywords"),
        ("intents:\n  x:\n    examples: hello", "intent 'x': examples must be a list"),
        ("intents:\n  x:\n    examples: [hi, 3]", "intent 'x': examples must be strings, got int"),
        ("intents:\n  x:\n    keywords: [[a]]", "intent 'x': keywords must be strings, got list"),
        ("intents:\n  x:\n    examples: ['!!!']", "intent 'x': examples entry '!!!' has no words"),
        ("intents:\n  x:\n    example: [hi]", "intent 'x' has unknown keys ['example']"),
        ("intents:\n  3:\n    examples: [hi]", "intent names must be non-empty strings, got 3"),
    ],
)
def test_malformed_intents_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("(", r"\(")):
        load_intents(text)


def test_default_intents_are_a_contact_centre_set() -> None:
    names = {intent.name for intent in default_intents()}
    assert 8 <= len(names) <= 12
    assert {
        "cancel_subscription",
        "billing_question",
        "speak_to_agent",
        "complaint",
        "change_address",
        "payment",
        "technical_support",
        "refund",
    } <= names


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("cancel", "cancel"),
        ("cancelling", "cancel"),
        ("cancelled", "cancel"),
        ("canceled", "cancel"),
        ("cancellation", "cancel"),
        ("cancels", "cancel"),
        ("subscriptions", "subscription"),
        ("charge", "charg"),
        ("charges", "charg"),
        ("charged", "charg"),
        ("address", "addres"),
        ("addresses", "addres"),
        ("is", "is"),
    ],
)
def test_stem_maps_a_words_forms_together(word: str, expected: str) -> None:
    assert stem(word) == expected


def test_content_stems_drop_filler_but_keep_question_words() -> None:
    assert content_stems("I'd like to cancel my Subscriptions, please!") == [
        "cancel",
        "subscription",
    ]
    assert content_stems("where is my order") == ["wher", "order"]  # stemmed too
    assert content_stems("hello") == ["hello"]  # all filler: keep it all


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("i would like to cancel my subscription please", "cancel_subscription"),
        ("cancelling my subscriptions", "cancel_subscription"),
        ("subscription cancel", "cancel_subscription"),  # word order
        ("i want to cancel my subscripton", "cancel_subscription"),  # a recognition error
        ("i want to end the plan", "cancel_subscription"),
        ("there is a strange charge on my invoice", "billing_question"),
        ("I have a question about my bills.", "billing_question"),
    ],
)
def test_matches(matcher: IntentMatcher, text: str, intent: str) -> None:
    found = matcher.match(text)
    assert found
    assert found[0][0] == intent
    assert 0.75 <= found[0][1] <= 1.0


def test_keyword_gives_a_fixed_score(matcher: IntentMatcher) -> None:
    assert matcher.match("there is a strange charge on my invoice") == [("billing_question", 0.8)]
    assert matcher.match("invoices") == [("billing_question", 0.8)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "yes thank you",
        "what is the weather like",
        "i want",
        "i want to",
        "cancel the order",  # half of an example is not a match
        "my plan for the weekend is to relax",
        "i need to send a letter",  # "send" is not "end"
        "okay",
    ],
)
def test_no_match(matcher: IntentMatcher, text: str) -> None:
    assert matcher.match(text) == []


def test_several_intents_best_first(matcher: IntentMatcher) -> None:
    assert matcher.match(
        "i want to cancel my subscription because of the charge on my invoice"
    ) == [
        ("cancel_subscription", 1.0),
        ("billing_question", 0.8),
    ]


def test_threshold(matcher: IntentMatcher) -> None:
    strict = IntentMatcher(load_intents(EXAMPLE), threshold=0.9)
    assert strict.match("there is a strange charge on my invoice") == []
    assert matcher.scores("cancel the order")["cancel_subscription"] == 0.5
    with pytest.raises(ValueError, match="threshold"):
        IntentMatcher([], threshold=0)


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="more than once"):
        IntentMatcher([Intent("a", ("x y",)), Intent("a", ("z w",))])


def test_no_intents_match_nothing() -> None:
    assert IntentMatcher([]).match("i want to cancel my subscription") == []


def test_one_word_example_scores_like_a_keyword() -> None:
    greeting = IntentMatcher([Intent("greeting", ("hello",))])
    assert greeting.match("hello there") == [("greeting", 0.8)]


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("i would like to cancel my subscription please", "cancel_subscription"),
        ("can i talk to a human please", "speak_to_agent"),
        ("put me through to your supervisor", "speak_to_agent"),
        ("this is the worst service i have ever had i am really angry", "complaint"),
        ("i moved house last week and need to update my address", "change_address"),
        ("my internet keeps dropping every evening", "technical_support"),
        ("i would like a refund please", "refund"),
        ("i want to pay my bill", "payment"),
        ("where is my parcel", "delivery_status"),
        ("what is my balance", "account_balance"),
        ("why is my bill so high this month", "billing_question"),
    ],
)
def test_default_intents_match_typical_requests(
    defaults: IntentMatcher, text: str, intent: str
) -> None:
    assert intent in [name for name, _ in defaults.match(text)]


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "yes thank you",
        "what is the weather like",
        "how are you today",
        "thank you very much goodbye",
        "i want to order a new phone",
        "hold on a second",
        "my name is john smith",
    ],
)
def test_default_intents_ignore_small_talk(defaults: IntentMatcher, text: str) -> None:
    assert defaults.match(text) == []
