"""The voice agent's dialog flow: the packaged sample played turn by turn (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from callstream.shared.errors import ConfigError
from callstream.workers.agent.dialog import Dialog, Flow, Reply, load_flow, parse_flow

GREETING = "Hello, thanks for calling. How can I help you today?"
PROMPT = "Please say or key in your account number, followed by the hash key."
FALLBACK = (
    "Sorry, I didn't catch that. You can ask about your bill, your balance, a payment, "
    "a refund, or ask for an agent."
)
TRANSFER_TEXT = "Let me transfer you to an agent."
BILL_ANSWER = (
    "Thank you. Your latest bill was issued on the first of the month and is due in 14 days. "
    "Is there anything else I can help with?"
)


@pytest.fixture(scope="module")
def flow() -> Flow:
    return load_flow()


@pytest.fixture(scope="module")
def dialog(flow: Flow) -> Dialog:
    return Dialog(flow)


def started(dialog: Dialog) -> dict[str, Any]:
    state: dict[str, Any] = {}
    assert dialog.greet(state) == Reply(GREETING)
    return state


def keyed(dialog: Dialog, state: dict[str, Any], tones: str) -> Reply | None:
    """Every tone but the last must say nothing; the last one's reply."""
    for tone in tones[:-1]:
        assert dialog.on_dtmf(state, tone) is None
    return dialog.on_dtmf(state, tones[-1])


def test_greeting_and_a_scripted_answer(dialog: Dialog) -> None:
    state = started(dialog)
    reply = dialog.on_utterance(state, "How do I get a refund?")
    assert reply is not None
    assert reply.intent == "refund"
    assert reply.action is None
    assert reply.text.startswith("Refunds are made to your original payment method")
    assert dialog.on_utterance(state, "   ") is None  # no words: nothing to say


def test_account_by_voice_read_back_and_confirmed(dialog: Dialog) -> None:
    state = started(dialog)
    assert dialog.on_utterance(state, "I have a question about my bill") == Reply(
        f"I can help with your bill. {PROMPT}", intent="billing_question"
    )
    assert dialog.on_utterance(state, "it's four one one two three four") == Reply(
        "I heard 4 1 1 2 3 4. Is that right?", intent="billing_question"
    )
    assert dialog.on_utterance(state, "yes that's right") == Reply(
        BILL_ANSWER, intent="billing_question", slot="account"
    )
    assert state["slots"] == {"account": "411234"}
    # A later question needing the account does not ask for it again.
    reply = dialog.on_utterance(state, "what is my balance")
    assert reply is not None
    assert reply.intent == "account_balance"
    assert reply.text.startswith("Thank you. Your balance is shown")


def test_account_by_keypad_corrected_with_no(dialog: Dialog) -> None:
    state = started(dialog)
    reply = dialog.on_utterance(state, "what's my balance")
    assert reply == Reply(PROMPT, intent="account_balance")
    assert keyed(dialog, state, "4112349#") == Reply(
        "I heard 4 1 1 2 3 4 9. Is that right?", intent="account_balance"
    )
    assert dialog.on_utterance(state, "no that's wrong") == Reply(
        "Okay, let's try again. Please say or key in your account number.",
        intent="account_balance",
    )
    assert "candidate" not in state
    assert dialog.on_dtmf(state, "1") is None
    assert dialog.on_dtmf(state, "*") is None  # starts the entry over
    assert keyed(dialog, state, "987654#") == Reply(
        "I heard 9 8 7 6 5 4. Is that right?", intent="account_balance"
    )
    reply = dialog.on_utterance(state, "yes")
    assert reply is not None
    assert reply.slot == "account"
    assert state["slots"] == {"account": "987654"}
    assert state["stage"] == "open"


def test_account_of_the_wrong_length_is_asked_again(dialog: Dialog) -> None:
    state = started(dialog)
    dialog.on_utterance(state, "I have a question about my bill")
    wrong = "Sorry, an account number has 6 to 10 digits. Please say or key it in again."
    assert keyed(dialog, state, "123#") == Reply(wrong)
    # Digits said while confirming replace the value read back.
    assert dialog.on_utterance(state, "five five five one two three") is not None
    assert dialog.on_utterance(state, "actually it's 555 124") == Reply(
        "I heard 5 5 5 1 2 4. Is that right?", intent="billing_question"
    )
    # Neither yes nor no: asked to answer yes or no, and read back again.
    assert dialog.on_utterance(state, "hmm the weather") == Reply(
        "Sorry, please answer yes or no. I heard 5 5 5 1 2 4. Is that right?"
    )


def test_keypad_reaching_max_digits_submits(dialog: Dialog) -> None:
    state = started(dialog)
    dialog.on_utterance(state, "I have a question about my bill")
    reply = keyed(dialog, state, "0123456789")
    assert reply is not None
    assert reply.text == "I heard 0 1 2 3 4 5 6 7 8 9. Is that right?"


def test_keypad_outside_a_slot_is_ignored(dialog: Dialog) -> None:
    state = started(dialog)
    assert dialog.on_dtmf(state, "5") is None
    assert dialog.on_dtmf(state, "#") is None
    assert "keys" not in state


@pytest.mark.parametrize(
    "text", ["I want to speak to an agent", "can I talk to a human", "representative please"]
)
def test_transfer(dialog: Dialog, text: str) -> None:
    state = started(dialog)
    reply = dialog.on_utterance(state, text)
    assert reply is not None
    assert reply.text == TRANSFER_TEXT
    assert reply.action == "transfer"
    assert dialog.on_utterance(state, "hello?") is None  # transferred: the agent is done


def test_transfer_while_asked_for_the_account(dialog: Dialog) -> None:
    state = started(dialog)
    dialog.on_utterance(state, "I have a question about my bill")
    reply = dialog.on_utterance(state, "just put me through to an agent")
    assert reply is not None
    assert reply.action == "transfer"


def test_cancel_and_goodbye(dialog: Dialog) -> None:
    state = started(dialog)
    reply = dialog.on_utterance(state, "I'd like to cancel my account")
    assert reply is not None
    assert reply.action is None
    assert reply.text.startswith("I'm sorry to hear you want to leave.")
    reply = dialog.on_utterance(state, "no that's all, thank you, goodbye")
    assert reply == Reply("Thank you for calling. Goodbye!", intent="goodbye", action="end")
    assert dialog.on_utterance(state, "bye") is None


def test_fallback_then_transfer(dialog: Dialog) -> None:
    state = started(dialog)
    assert dialog.on_utterance(state, "the weather is lovely") == Reply(FALLBACK)
    assert dialog.on_utterance(state, "purple monkeys") == Reply(
        "Sorry, I still didn't understand. Could you say it in a few words?"
    )
    assert dialog.on_utterance(state, "banana") == Reply(
        "I'm having trouble understanding. Let me transfer you to an agent.", action="transfer"
    )


def test_understood_turn_resets_the_fallbacks(dialog: Dialog) -> None:
    state = started(dialog)
    assert dialog.on_utterance(state, "the weather is lovely") == Reply(FALLBACK)
    assert dialog.on_utterance(state, "purple monkeys") is not None
    assert dialog.on_utterance(state, "how do I get a refund") is not None
    assert dialog.on_utterance(state, "banana") == Reply(FALLBACK)


def test_state_survives_failover(flow: Flow) -> None:
    first = Dialog(flow)
    state: dict[str, Any] = {}
    first.greet(state)
    first.on_utterance(state, "I have a question about my bill")
    first.on_dtmf(state, "4")
    first.on_dtmf(state, "1")
    snapshot = json.dumps(state)  # the checkpoint

    replica = Dialog(load_flow())  # another replica takes the call over
    restored = json.loads(snapshot)
    assert restored == state
    assert replica.greet(restored) == Reply(GREETING)  # does not reset a dialog under way
    assert restored == state
    assert keyed(replica, restored, "1234#") == Reply(
        "I heard 4 1 1 2 3 4. Is that right?", intent="billing_question"
    )
    restored = json.loads(json.dumps(restored))
    assert replica.on_utterance(restored, "correct") == Reply(
        BILL_ANSWER, intent="billing_question", slot="account"
    )
    assert json.loads(json.dumps(restored)) == restored


VALID = """
greeting: Hi
nlp_intents: false
intents:
  hello: {examples: ["hello there"]}
replies:
  hello: {say: Hello}
fallback: {say: Pardon}
"""


def test_a_minimal_flow() -> None:
    dialog = Dialog(parse_flow(VALID))
    state: dict[str, Any] = {}
    assert dialog.greet(state) == Reply("Hi")
    assert dialog.on_utterance(state, "hello there") == Reply("Hello", intent="hello")
    assert dialog.on_utterance(state, "what") == Reply("Pardon")
    assert dialog.on_utterance(state, "what") == Reply("Pardon")
    assert dialog.on_utterance(state, "what") == Reply(TRANSFER_TEXT, action="transfer")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("greeting: [", "not valid YAML"),
        ("- a", "the file must be a mapping, got list"),
        (VALID + "extra: 1\n", "unknown keys ['extra']"),
        (VALID.replace("greeting: Hi\n", ""), "the file lacks ['greeting']"),
        (VALID.replace("say: Hello", "say: Hello, action: hangup"), "action must be one of"),
        (VALID.replace("hello: {say", "goodbye: {say"), "reply 'goodbye': no intent"),
        (VALID.replace("say: Hello", "slot: account, answer: A"), "no slot named 'account'"),
        (
            VALID + "slots:\n  a: {prompt: P, min_digits: 6, max_digits: 3, confirm: C}\n",
            "slot 'a': max_digits must be a whole number >= 6",
        ),
        (
            VALID + "slots:\n  a: {prompt: P, min_digits: 1, max_digits: 3, confirm: '{x}'}\n",
            "confirm may only use {digits}",
        ),
        (VALID + "confirmation: {affirm: [yes]}\n", "quote yes/no"),
        (VALID.replace("fallback: {say: Pardon}", "fallback: {say: []}"), "fallback.say"),
        (VALID + "threshold: 2\n", "threshold must be in (0, 1]"),
    ],
)
def test_bad_flow_is_a_config_error(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_flow(str(path))
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_flow(str(tmp_path / "nope.yaml"))
