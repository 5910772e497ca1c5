"""The voice agent's conversation: a dialog flow from YAML, played turn by turn.

Pure: nothing here does I/O but :func:`load_flow` reading its file. A :class:`Flow` says what
the agent greets with, which intents it listens for (the NLP worker's
:class:`~callstream.workers.nlp.intents.IntentMatcher`, on its built-in intents and/or the
flow's own), what it replies to each, which slots (digits: an account number) a reply needs
first, and how it re-prompts when it does not understand. The schema, documented in
``default_flow.yaml`` (the packaged sample)::

    greeting: TEXT
    nlp_intents: true            # also the NLP worker's built-in intents (default true)
    threshold: 0.75              # the matcher's threshold
    intents: {NAME: {examples: [...], keywords: [...]}}        # the NLP intents file's shape
    replies: {NAME: {say: TEXT, action: transfer|end, slot: SLOT, answer: TEXT}}
    slots: {SLOT: {prompt, min_digits, max_digits, confirm ("{digits}"), reprompt, retry}}
    confirmation: {affirm: [PHRASE...], deny: [PHRASE...], reprompt: TEXT}   # yes / no
    fallback: {say: [TEXT...], max: N, then: {say: TEXT, action: transfer|end}}

:class:`Dialog` is shared by every call of a replica; a call's progress lives in the ``state``
dict its methods are given (mutated in place, only str / int / dict values), so a replica that
takes the call over after a failover continues from the checkpointed state. Its keys:

``stage``
    ``"open"`` (listening for an intent), ``"collect"`` (asking for ``slot``), ``"confirm"``
    (a value read back, waiting for yes/no), ``"done"`` (transferred or ended: nothing more is
    said). Missing: not greeted yet, the same as ``"open"``.
``intent`` / ``slot``
    The reply being served and the slot it waits for (collect / confirm only).
``candidate``
    The value read back (confirm only).
``keys``
    Keypad digits entered so far (without the closing ``#``).
``misses``
    Consecutive turns not understood (see ``fallback``).
``slots``
    Confirmed slot values, by name: a second question needing the account does not ask again.

Turn rules. An utterance while open is matched to an intent (its reply; a miss is a fallback).
While collecting, digits in the utterance (spoken or written, :mod:`numbers
<callstream.workers.nlp.numbers>`) are the value: of the right length they are read back,
else the slot's ``reprompt`` (a miss); with no digits, a matching intent takes over (the caller
changed their mind), else a miss. While confirming, digits replace the value (read back
again); else "no" asks again (``retry``), "yes" fills the slot and says the reply's
``answer``; else an intent takes over, else ``confirmation.reprompt`` and the read-back
again (a miss). Keypad digits go to ``keys`` while collecting or confirming (nothing is
said); ``#`` submits them as if said (reaching ``max_digits`` submits at once), ``*`` clears
them; tones outside those stages are ignored. After ``fallback.max`` consecutive misses
re-prompted, the next one does ``fallback.then`` (by default a transfer).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from callstream.shared.errors import ConfigError
from callstream.workers.nlp.intents import (
    DEFAULT_THRESHOLD,
    Intent,
    IntentMatcher,
    default_intents,
    load_intents,
)
from callstream.workers.nlp.numbers import spoken_digits
from callstream.workers.nlp.tokens import tokenize

ACTIONS = frozenset({"transfer", "end"})
TRANSFER = "transfer"
END = "end"

OPEN = "open"
COLLECT = "collect"
CONFIRM = "confirm"
DONE = "done"

_KEYPAD_DIGITS = frozenset("0123456789")


@dataclass(frozen=True)
class Reply:
    """One turn of the agent."""

    text: str  # what the agent says
    intent: str | None = None  # the intent it answered, if any
    action: str | None = None  # "transfer" (to a human), "end" (goodbye), or None
    slot: str | None = None  # a slot filled by this turn, if any


@dataclass(frozen=True)
class Route:
    """What the agent does on an intent: say ``say``; ``action``; or ask for ``slot``
    (unless already confirmed) and then say ``answer``."""

    say: str = ""
    action: str | None = None
    slot: str | None = None
    answer: str = ""


@dataclass(frozen=True)
class Slot:
    """A value of ``min_digits`` to ``max_digits`` digits, asked for, read back, confirmed."""

    prompt: str
    min_digits: int
    max_digits: int
    confirm: str  # "{digits}": the value spelled digit by digit
    reprompt: str
    retry: str


@dataclass(frozen=True)
class Flow:
    """A parsed, validated dialog flow (see the module's docstring for the YAML)."""

    source: str
    greeting: str
    intents: tuple[Intent, ...]  # only those with a reply
    threshold: float
    replies: Mapping[str, Route]
    slots: Mapping[str, Slot]
    yes: tuple[tuple[str, ...], ...]  # phrases as lower-case words
    no: tuple[tuple[str, ...], ...]
    confirm_reprompt: str
    fallbacks: tuple[str, ...]
    max_fallbacks: int
    fallback_then: Route


# ------------------------------------------------------------------------------ loading


def load_flow(path: str | None = None) -> Flow:
    """The flow in the YAML file ``path`` (None: the packaged ``default_flow.yaml``).

    Raises :class:`ConfigError` naming the file and what is wrong with it."""
    if path is None:
        source = "default_flow.yaml"
        resource = importlib.resources.files("callstream.workers.agent") / source
        text = resource.read_text(encoding="utf-8")
    else:
        source = path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"dialog flow {source}: cannot read it: {exc}") from None
    try:
        return parse_flow(text, source)
    except ValueError as exc:
        raise ConfigError(f"dialog flow {source}: {exc}") from None


_TOP_KEYS = frozenset(
    {
        "greeting",
        "nlp_intents",
        "threshold",
        "intents",
        "replies",
        "slots",
        "confirmation",
        "fallback",
    }
)


def parse_flow(text: str, source: str = "<string>") -> Flow:
    """The flow in YAML ``text``; ``ValueError`` saying what is wrong."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None
    doc = _mapping(doc, "the file", _TOP_KEYS, required=("greeting", "replies", "fallback"))
    greeting = _text(doc["greeting"], "greeting")
    nlp_intents = doc.get("nlp_intents", True)
    if not isinstance(nlp_intents, bool):
        raise ValueError(f"nlp_intents must be true or false, got {nlp_intents!r}")
    threshold = doc.get("threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")

    known: dict[str, Intent] = {}
    if nlp_intents:
        known.update((i.name, i) for i in default_intents())
    own: dict[str, Intent] = {}
    if doc.get("intents") is not None:
        own = {i.name: i for i in load_intents(yaml.safe_dump({"intents": doc["intents"]}))}
        known.update(own)

    slots = {
        _name(name, "slot"): _slot(name, body)
        for name, body in _mapping(doc.get("slots") or {}, "slots").items()
    }
    replies: dict[str, Route] = {}
    for name, body in _mapping(doc["replies"], "replies").items():
        _name(name, "reply")
        if name not in known:
            raise ValueError(f"reply {name!r}: no intent of that name")
        route = _route(body, f"reply {name!r}", slot_allowed=True)
        if route.slot is not None and route.slot not in slots:
            raise ValueError(f"reply {name!r}: no slot named {route.slot!r}")
        replies[name] = route
    if not replies:
        raise ValueError("replies: at least one reply is needed")
    unused = sorted(set(own) - set(replies))
    if unused:
        raise ValueError(f"intents without a reply: {unused}")

    confirmation = _mapping(
        doc.get("confirmation") or {}, "confirmation", frozenset({"affirm", "deny", "reprompt"})
    )
    yes = _phrases(confirmation.get("affirm", ["yes", "yeah", "correct"]), "confirmation.affirm")
    no = _phrases(confirmation.get("deny", ["no", "nope", "wrong"]), "confirmation.deny")
    confirm_reprompt = _text(
        confirmation.get("reprompt", "Sorry, please answer yes or no."), "confirmation.reprompt"
    )

    fallback = _mapping(
        doc["fallback"], "fallback", frozenset({"say", "max", "then"}), required=("say",)
    )
    says = fallback["say"]
    if isinstance(says, str):
        says = [says]
    if not isinstance(says, list) or not says:
        raise ValueError("fallback.say must be a text or a non-empty list of texts")
    fallbacks = tuple(_text(s, "fallback.say") for s in says)
    max_fallbacks = _count(fallback.get("max", 2), "fallback.max", minimum=0)
    then = fallback.get("then", {"say": "Let me transfer you to an agent.", "action": TRANSFER})
    fallback_then = _route(then, "fallback.then", slot_allowed=False)
    if fallback_then.action is None:
        raise ValueError("fallback.then needs an action (transfer or end)")

    return Flow(
        source=source,
        greeting=greeting,
        intents=tuple(known[name] for name in replies),
        threshold=float(threshold),
        replies=replies,
        slots=slots,
        yes=yes,
        no=no,
        confirm_reprompt=confirm_reprompt,
        fallbacks=fallbacks,
        max_fallbacks=max_fallbacks,
        fallback_then=fallback_then,
    )


def _mapping(
    value: Any,
    where: str,
    keys: frozenset[str] | None = None,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    if not isinstance(value, dict):
        kind = "nothing" if value is None else type(value).__name__
        raise ValueError(f"{where} must be a mapping, got {kind}")
    if keys is not None:
        unknown = sorted(str(k) for k in value if k not in keys)
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}: only {sorted(keys)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} names must be non-empty strings, got {value!r}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty text, got {value!r}")
    return " ".join(value.split())


def _count(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where} must be a whole number >= {minimum}, got {value!r}")
    return value


def _route(body: Any, where: str, slot_allowed: bool) -> Route:
    keys = {"say", "action", "slot", "answer"} if slot_allowed else {"say", "action"}
    body = _mapping(body, where, frozenset(keys))
    say = _text(body["say"], f"{where}: say") if "say" in body else ""
    action = body.get("action")
    if action is not None and action not in ACTIONS:
        raise ValueError(f"{where}: action must be one of {sorted(ACTIONS)}, got {action!r}")
    slot = body.get("slot")
    answer = ""
    if slot is not None:
        slot = _name(slot, f"{where}: slot")
        if action is not None:
            raise ValueError(f"{where}: a reply has an action or a slot, not both")
        if "answer" not in body:
            raise ValueError(f"{where}: a reply with a slot needs an answer")
        answer = _text(body["answer"], f"{where}: answer")
    elif "answer" in body:
        raise ValueError(f"{where}: answer is only for a reply with a slot")
    elif not say:
        raise ValueError(f"{where}: needs say (or a slot)")
    return Route(say=say, action=action, slot=slot, answer=answer)


_SLOT_KEYS = frozenset({"prompt", "min_digits", "max_digits", "confirm", "reprompt", "retry"})


def _slot(name: Any, body: Any) -> Slot:
    where = f"slot {name!r}"
    body = _mapping(
        body, where, _SLOT_KEYS, required=("prompt", "min_digits", "max_digits", "confirm")
    )
    low = _count(body["min_digits"], f"{where}: min_digits", minimum=1)
    high = _count(body["max_digits"], f"{where}: max_digits", minimum=low)
    prompt = _text(body["prompt"], f"{where}: prompt")
    confirm = _text(body["confirm"], f"{where}: confirm")
    try:
        confirm.format(digits="1 2 3")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{where}: confirm may only use {{digits}}, not {exc!s} ({confirm!r})"
        ) from None
    reprompt = _text(body.get("reprompt", prompt), f"{where}: reprompt")
    retry = _text(body.get("retry", prompt), f"{where}: retry")
    return Slot(prompt, low, high, confirm, reprompt, retry)


def _phrases(value: Any, where: str) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of phrases")
    phrases = []
    for item in value:
        words = tuple(t.text for t in tokenize(item)) if isinstance(item, str) else ()
        if not words:
            hint = " (quote yes/no: YAML reads them as booleans)" if isinstance(item, bool) else ""
            raise ValueError(f"{where}: {item!r} is not a phrase{hint}")
        phrases.append(words)
    return tuple(phrases)


# ------------------------------------------------------------------------------ playing


class Dialog:
    """Plays a :class:`Flow`; one per replica, shared by its calls (state is per call)."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self._matcher = IntentMatcher(flow.intents, threshold=flow.threshold)

    # -------------------------------------------------------------- events

    def greet(self, state: dict[str, Any]) -> Reply:
        """The greeting; starts the dialog (a dialog already under way is left as it is)."""
        state.setdefault("stage", OPEN)
        state.setdefault("misses", 0)
        state.setdefault("slots", {})
        return Reply(self.flow.greeting)

    def on_utterance(self, state: dict[str, Any], text: str) -> Reply | None:
        """The reply to a final utterance of the caller; None for no words or after the end."""
        stage = state.get("stage", OPEN)
        if stage == DONE or not tokenize(text):
            return None
        if stage in (COLLECT, CONFIRM):
            return self._on_value(state, text)
        return self._on_intent(state, text) or self._miss(state, self._fallback_text(state))

    def on_dtmf(self, state: dict[str, Any], tone: str) -> Reply | None:
        """A keypad tone: digits build an entry for the slot being asked for (nothing said),
        ``#`` submits it, ``*`` clears it. None when there is nothing to say."""
        if state.get("stage") not in (COLLECT, CONFIRM):
            return None
        tone = tone.strip()
        keys = str(state.get("keys", ""))
        if tone in _KEYPAD_DIGITS and len(tone) == 1:
            keys += tone
            state["keys"] = keys
            if len(keys) < self.flow.slots[state["slot"]].max_digits:
                return None
        elif tone == "*":
            state.pop("keys", None)
            return None
        elif tone != "#":
            return None
        state.pop("keys", None)
        return self._offer(state, keys)

    # -------------------------------------------------------------- turns

    def _on_intent(self, state: dict[str, Any], text: str) -> Reply | None:
        """The reply of the intent ``text`` matches, if any."""
        found = self._matcher.match(text)
        if not found:
            return None
        name = found[0][0]
        route = self.flow.replies[name]
        state["misses"] = 0
        for key in ("intent", "slot", "candidate", "keys"):
            state.pop(key, None)
        if route.slot is None:
            state["stage"] = DONE if route.action is not None else OPEN
            return Reply(route.say, intent=name, action=route.action)
        known = state.setdefault("slots", {}).get(route.slot)
        if isinstance(known, str):
            state["stage"] = OPEN
            return Reply(_join(route.say, route.answer), intent=name)
        state.update(stage=COLLECT, intent=name, slot=route.slot)
        return Reply(_join(route.say, self.flow.slots[route.slot].prompt), intent=name)

    def _on_value(self, state: dict[str, Any], text: str) -> Reply:
        """An utterance while a slot is being asked for or read back."""
        slot = self.flow.slots[state["slot"]]
        digits = "".join(run.digits for run in spoken_digits(text))
        if digits:
            return self._offer(state, digits)
        if state["stage"] == CONFIRM:
            words = tuple(t.text for t in tokenize(text))
            if _says(words, self.flow.no):
                state["stage"] = COLLECT
                state.pop("candidate", None)
                state["misses"] = 0
                return Reply(slot.retry, intent=state["intent"])
            if _says(words, self.flow.yes):
                return self._fill(state)
        switched = self._on_intent(state, text)
        if switched is not None:
            return switched
        if state["stage"] == CONFIRM:
            again = slot.confirm.format(digits=_spell(state["candidate"]))
            return self._miss(state, _join(self.flow.confirm_reprompt, again))
        return self._miss(state, slot.reprompt)

    def _offer(self, state: dict[str, Any], digits: str) -> Reply:
        """Digits heard or keyed for the slot: read back if they fit, else re-prompt."""
        slot = self.flow.slots[state["slot"]]
        if not slot.min_digits <= len(digits) <= slot.max_digits:
            state["stage"] = COLLECT
            state.pop("candidate", None)
            return self._miss(state, slot.reprompt)
        state.update(stage=CONFIRM, candidate=digits, misses=0)
        return Reply(slot.confirm.format(digits=_spell(digits)), intent=state["intent"])

    def _fill(self, state: dict[str, Any]) -> Reply:
        """The caller confirmed the value read back: fill the slot, give the answer."""
        name, intent = state.pop("slot"), state.pop("intent")
        state.setdefault("slots", {})[name] = state.pop("candidate")
        state.pop("keys", None)
        state.update(stage=OPEN, misses=0)
        return Reply(self.flow.replies[intent].answer, intent=intent, slot=name)

    def _fallback_text(self, state: dict[str, Any]) -> str:
        misses = int(state.get("misses", 0))
        return self.flow.fallbacks[min(misses, len(self.flow.fallbacks) - 1)]

    def _miss(self, state: dict[str, Any], text: str) -> Reply:
        """A turn not understood: re-prompt with ``text``, or after too many, give up."""
        misses = int(state.get("misses", 0))
        if misses >= self.flow.max_fallbacks:
            then = self.flow.fallback_then
            for key in ("intent", "slot", "candidate", "keys"):
                state.pop(key, None)
            state.update(stage=DONE, misses=misses + 1)
            return Reply(then.say, action=then.action)
        state["misses"] = misses + 1
        return Reply(text)


def _says(words: tuple[str, ...], phrases: tuple[tuple[str, ...], ...]) -> bool:
    """Whether ``words`` contain one of ``phrases`` (each a run of whole words)."""
    return any(
        words[i : i + len(phrase)] == phrase
        for phrase in phrases
        for i in range(len(words) - len(phrase) + 1)
    )


def _spell(digits: str) -> str:
    """ "411234" → "4 1 1 2 3 4": read back one digit at a time."""
    return " ".join(digits)


def _join(*texts: str) -> str:
    return " ".join(t for t in texts if t)
