"""The ``nlp`` worker kind: insights from each final transcript, and a summary at the call's end.

Its input is the call's events, not its audio: final transcripts, DTMF, the call's start and end,
until ``transcribe.done`` (the transcriber's last result; a call that never gets one is ended
``CS_CALL_IDLE_TIMEOUT_S`` after ``call.ended``). For every final utterance it publishes

* ``nlp.sentiment`` — VADER's compound score, its label, the participant's running level (an
  exponentially weighted mean, :class:`~callstream.workers.nlp.sentiment.RollingSentiment`);
* ``nlp.key_phrases`` — YAKE's ranked phrases (when it finds any);
* ``nlp.intent`` — one per intent of the ``--intents`` file that matches;
* ``nlp.pii`` — the redacted text and where each finding was (when there is any);

each with the id ``{call}:nlp.{what}:{channel}:{onset_ms}`` (the utterance's), so a replica that
takes the call over publishes nothing twice. At the end, ``nlp.summary`` (then the runtime's
``nlp.done``). The per-call tallies live in ``ctx.state`` and survive a takeover. In redaction
mode (``CS_REDACT=1``) phrases and intents are found in the redacted text and the summary holds
no DTMF tones. docs/nlp.md has the details and the choice of libraries.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callstream.shared.catalogue import TRANSCRIPT
from callstream.shared.errors import ConfigError
from callstream.shared.events import CALL_ENDED, CALL_STARTED, DTMF, Event
from callstream.shared.settings import Settings
from callstream.workers.api import (
    CallContext,
    CallHandler,
    HandlerFactory,
    InEnd,
    Inputs,
    Item,
    Kind,
)
from callstream.workers.nlp.intents import IntentMatcher, default_intents, load_intents
from callstream.workers.nlp.phrases import KeyPhrases
from callstream.workers.nlp.pii import find_pii, redact
from callstream.workers.nlp.sentiment import RollingSentiment, SentimentScorer
from callstream.workers.nlp.summary import CallSummary, Utterance

NAME = "nlp"
SENTIMENT = "nlp.sentiment"
KEY_PHRASES = "nlp.key_phrases"
INTENT = "nlp.intent"
PII = "nlp.pii"
SUMMARY = "nlp.summary"
INPUTS = Inputs(
    audio=False,
    events=frozenset({CALL_STARTED, TRANSCRIPT, DTMF, CALL_ENDED}),
    until=frozenset({"transcribe.done"}),
)
PHRASES_PER_UTTERANCE = 5


@dataclass(frozen=True, slots=True)
class Analysers:
    """One replica's analysers, shared by its calls (none holds per-call state)."""

    sentiment: SentimentScorer
    phrases: KeyPhrases
    intents: IntentMatcher
    redact: bool  # CS_REDACT: phrases and intents from the redacted text, no tones in summaries


class NlpHandler:
    """One call's insights."""

    def __init__(self, ctx: CallContext, analysers: Analysers) -> None:
        self._ctx = ctx
        self._an = analysers
        self._summary = CallSummary(ctx.state.get("summary"))

    async def handle(self, batch: Sequence[Item]) -> None:
        summary = self._summary
        for _, value in batch:
            if isinstance(value, InEnd):
                self._ctx.events.publish(SUMMARY, summary.summary(show_tones=not self._an.redact))
            elif not isinstance(value, Event):
                continue
            elif value.type == TRANSCRIPT:
                if value.data.get("resultStatus") == "Final":
                    self._utterance(value)
            elif value.type == DTMF:
                summary.dtmf(value.id, str(value.data.get("tone", "")))
            elif value.type == CALL_STARTED:
                summary.started_ms = value.time_ms
            elif value.type == CALL_ENDED:
                summary.ended_ms = value.time_ms
        self._ctx.state["summary"] = summary.state()

    async def aclose(self) -> None:
        pass

    def _utterance(self, event: Event) -> None:
        data = event.data
        text = data.get("text")
        if not isinstance(text, str):
            return
        prefix = f"{event.call_id}:{TRANSCRIPT}:"
        key = event.id.removeprefix(prefix) if event.id.startswith(prefix) else event.id
        raw_participant = data.get("participantRawID")
        participant = raw_participant if isinstance(raw_participant, str) else ""
        publish = self._ctx.events.publish
        entities = find_pii(text)
        redacted = redact(text, entities) if entities else text
        if entities:
            publish(
                PII,
                {
                    "utterance": event.id,
                    "participant": participant or None,
                    "redacted_text": redacted,
                    "entities": [
                        {"type": e.type, "start": e.start, "end": e.end} for e in entities
                    ],
                },
                key=key,
            )
        analysed = redacted if self._an.redact else text
        score = self._an.sentiment.score(text)
        phrases = [
            phrase
            for phrase in self._an.phrases.extract(analysed, PHRASES_PER_UTTERANCE)
            if "[" not in phrase  # a redaction marker is no key phrase
        ]
        intents = self._an.intents.match(analysed)
        utterance = Utterance(
            event.id, participant, _int(data.get("offset")), _int(data.get("duration")), score
        )
        self._summary.add(utterance, phrases, intents)
        level = RollingSentiment()  # over the participant's utterances so far, in order
        for said in self._summary.utterances:
            if said.participant == participant:
                level.update(said.sentiment)
        publish(
            SENTIMENT,
            {
                "utterance": event.id,
                "participant": participant or None,
                "score": round(score, 4),
                "label": SentimentScorer.label(score),
                "rolling": round(level.value if level.count else score, 4),
            },
            key=key,
        )
        if phrases:
            publish(KEY_PHRASES, {"utterance": event.id, "phrases": phrases}, key=key)
        for name, intent_score in intents:
            publish(
                INTENT,
                {"utterance": event.id, "name": name, "score": round(intent_score, 4)},
                key=f"{key}:{name}",
            )


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def nlp_factory(analysers: Analysers) -> HandlerFactory:
    def factory(ctx: CallContext) -> CallHandler:
        return NlpHandler(ctx, analysers)

    return factory


def configure(options: argparse.Namespace) -> HandlerFactory:
    """One replica's analysers, from its options (``--intents FILE``) and ``CS_REDACT``."""
    path: Path | None = getattr(options, "intents", None)
    if path is None:
        intents = default_intents()
    else:
        try:
            intents = load_intents(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--intents {path}: {exc}") from None
    return nlp_factory(
        Analysers(
            sentiment=SentimentScorer(),
            phrases=KeyPhrases(),
            intents=IntentMatcher(intents),
            redact=Settings.from_env(os.environ).redact,
        )
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--intents",
        type=Path,
        default=None,
        metavar="FILE",
        help="intents to detect, YAML (docs/nlp.md#intents); default: a contact-centre set",
    )


KIND = Kind(
    NAME,
    configure=configure,
    inputs=INPUTS,
    help="sentiment, key phrases, intents and PII of each final transcript; a call summary",
    max_calls=500,
    add_arguments=_add_arguments,
)
