"""The event catalogue: every event type callstream publishes, with a JSON Schema each (pure).

Each entry (:class:`EventSpec`) names a type, says in one line what it means and who publishes
it, holds the JSON Schema (draft 2020-12) of its ``data`` and one realistic example event.
:func:`schema_for` gives the schema of a whole event (the envelope of :mod:`shared.events` with
that ``data``); :func:`validate` checks an event against it. ``docs/events.md`` describes the
same catalogue for people; a unit test keeps its examples equal to these.

Besides the fixed types there is one *family*: ``{kind}.done``, published by the worker runtime
for every worker kind (``transcribe.done``, ``echo.done``, …). :func:`schema_for` resolves any
``*.done`` type whose prefix is a valid kind name; :data:`FAMILIES` lists the family.

Worker kinds written by users may publish types of their own: :func:`envelope_schema` is the
schema of any event whatever its ``data``. :func:`validate` rejects a type that is neither in
the catalogue nor named in ``allow`` (or ``allow_unknown=True``), so a typo in one of our own
types cannot pass.

The schemas are plain data (dicts), so consumers in any language can use them. ``data`` schemas
are closed (``additionalProperties: false``) so that a field added to an event without its entry
here fails our tests; a consumer should still ignore fields it does not know.

Only :func:`validate` needs the ``jsonschema`` package, which is a development dependency (the
``dev`` extra): it is imported when :func:`validate` is first called, so importing this module,
and everything else in callstream, works without it.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any, get_args

from callstream.shared.audio import SUPPORTED_RATES_HZ, Mode
from callstream.shared.errors import CallstreamError
from callstream.shared.events import (
    CALL_ENDED,
    CALL_STARTED,
    DTMF,
    PLAYBACK_MARK,
    SCHEMA_VERSION,
    WORKER_FAILED,
)

__all__ = [
    "AGENT_TURN",
    "CALL_ENDED",
    "CALL_STARTED",
    "DONE_FAMILY",
    "DONE_SUFFIX",
    "DTMF",
    "DTMF_TONES",
    "EVENTS",
    "FAMILIES",
    "JSON_SCHEMA_DIALECT",
    "KIND_PATTERN",
    "NLP_INTENT",
    "NLP_KEY_PHRASES",
    "NLP_PII",
    "NLP_SENTIMENT",
    "NLP_SUMMARY",
    "PLAYBACK_MARK",
    "SPEECH_STARTED",
    "SPEECH_STOPPED",
    "TRANSCRIPT",
    "WORKER_FAILED",
    "EventSpec",
    "InvalidEvent",
    "done_kind",
    "done_type",
    "envelope_schema",
    "schema_for",
    "spec_for",
    "specs",
    "validate",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Event type names. The first five are defined with the envelope (shared/events.py, where the
# gateway, egress and worker runtime take them from); the transcribe worker's are here.
SPEECH_STARTED = "speech.started"
SPEECH_STOPPED = "speech.stopped"
TRANSCRIPT = "transcript"
# The nlp worker's (workers/nlp/worker.py).
NLP_SENTIMENT = "nlp.sentiment"
NLP_KEY_PHRASES = "nlp.key_phrases"
NLP_INTENT = "nlp.intent"
NLP_PII = "nlp.pii"
NLP_SUMMARY = "nlp.summary"
AGENT_TURN = "agent.turn"
DONE_SUFFIX = ".done"
DONE_FAMILY = "{kind}" + DONE_SUFFIX  # the family's name in FAMILIES and in docs/events.md

# A worker kind's name (``callstream worker KIND``); ``{kind}.done`` is built from it.
KIND_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
_KIND = re.compile(KIND_PATTERN[1:-1])  # used with fullmatch
_DONE = re.compile(f"({KIND_PATTERN[1:-1]}){re.escape(DONE_SUFFIX)}")

# What the gateway accepts in DtmfData (shared/protocols/acs.py), upper-cased.
DTMF_TONES = tuple("0123456789*#ABCD")

# The call id as shared/keys.py validates it; every event id starts with it.
_CALL_ID_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,127}(~[0-9]+)?$"
# Event.to_json's time: ISO-8601 UTC with milliseconds and "Z" (shared.events.iso_time).
_TIME_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{3}Z$"
)


def _ticks(what: str) -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 0,
        "description": f"{what}, in 100-ns ticks from the call's first frame",
    }


def _closed(
    properties: Mapping[str, Any], description: str, optional: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON object with exactly these properties (and maybe the ``optional`` ones)."""
    return {
        "type": "object",
        "description": description,
        "properties": {**properties, **(optional or {})},
        "required": list(properties),
        "additionalProperties": False,
    }


_UTTERANCE = {
    "type": "string",
    "pattern": r":transcript:[0-3]:[0-9]+$",
    "description": "the id of the Final transcript event it is about",
}
_NULLABLE_PARTICIPANT = {
    "type": ["string", "null"],
    "description": "the speaker's participantRawID; null on a mixed call",
}
_SCORE = {"type": "number", "minimum": -1, "maximum": 1}
_NLP_UTTERANCE_ID = r":nlp\.{what}:[0-3]:[0-9]+{tail}$"


def _nlp_id(what: str, tail: str = "") -> str:
    return _NLP_UTTERANCE_ID.replace("{what}", what).replace("{tail}", tail)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event type of the catalogue (or one family of types, such as ``{kind}.done``)."""

    type: str  # the type name; for a family, its name with a placeholder ("{kind}.done")
    description: str  # one line: what happened when this event is published
    publisher: str  # who publishes it
    id_format: str  # how its stable id is made
    id_pattern: str  # a regular expression the id matches (searched, as JSON Schema does)
    data: Mapping[str, Any]  # JSON Schema of the event's ``data``
    example: Mapping[str, Any]  # one realistic event of this type, as JSON decodes it
    family: bool = False

    def schema(self, event_type: str | None = None) -> dict[str, Any]:
        """JSON Schema of a whole event of this type (a family's needs the concrete type)."""
        if self.family:
            kind = done_kind(event_type) if event_type is not None else None
            if kind is None:
                raise ValueError(
                    f"{self.type} needs a type like transcribe.done, got {event_type!r}"
                )
            id_pattern = f":{kind}\\.done$"  # a kind name has no metacharacter
            id_format = self.id_format.replace("{kind}", kind)
            return _event_schema(
                event_type, _done_data(kind), self.description, id_pattern, id_format
            )
        if event_type not in (None, self.type):
            raise ValueError(f"this is the schema of {self.type}, not of {event_type!r}")
        return _event_schema(
            self.type, self.data, self.description, self.id_pattern, self.id_format
        )


def _event_schema(
    event_type: str | None,
    data: Mapping[str, Any],
    description: str,
    id_pattern: str | None = None,
    id_format: str | None = None,
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"callstream event {event_type}" if event_type else "callstream event",
        "description": description,
        "type": "object",
        "properties": {
            "v": {"const": SCHEMA_VERSION, "description": "envelope version"},
            "id": {
                "type": "string",
                "minLength": 1,
                "description": "stable: derived from what the event describes; drop duplicates",
            },
            "call_id": {"type": "string", "pattern": _CALL_ID_PATTERN},
            "type": {"const": event_type} if event_type else {"type": "string", "minLength": 1},
            "time": {
                "type": "string",
                "format": "date-time",
                "pattern": _TIME_PATTERN,
                "description": "ISO-8601 UTC with milliseconds, e.g. 2025-03-14T09:26:53.589Z",
            },
            "data": copy.deepcopy(dict(data)),
        },
        "required": ["v", "id", "call_id", "type", "time", "data"],
        "additionalProperties": False,
    }
    if id_pattern is not None:
        schema["properties"]["id"]["pattern"] = id_pattern
    if id_format is not None:
        schema["properties"]["id"]["description"] = f"stable: {id_format}"
    return schema


_KIND_FIELD = {"type": "string", "pattern": KIND_PATTERN, "description": "the worker kind"}
_PARTICIPANT = {
    "type": "string",
    "description": 'the participant\'s raw id (ACS participantRawID); "" on a mixed call',
}


def _speech_data(offset: str) -> dict[str, Any]:
    return _closed(
        {
            "participantRawID": _PARTICIPANT,
            "channel": {
                "type": "integer",
                "minimum": 0,
                "maximum": 3,
                "description": "the audio stream: 0 on a mixed call, the participant's 0-3 "
                "on an unmixed one",
            },
            "offset": _ticks(offset),
        },
        "a voice activity boundary on one audio stream",
    )


def _done_data(kind: str | None) -> dict[str, Any]:
    """``{kind}.done``'s data; for one kind, ``kind`` is that kind."""
    kind_field: dict[str, Any] = dict(_KIND_FIELD)
    if kind is not None:
        kind_field["const"] = kind
    return _closed(
        {
            "kind": kind_field,
            "reason": {
                "type": "string",
                "minLength": 1,
                "description": "why the call's input ended: the gateway's reason (normal, …), "
                "inbound_idle (the inbound went quiet: its gateway is gone) or done_missing "
                "(call.ended came, the other kind's .done this kind waits for did not)",
            },
        },
        "the worker kind has published its last result for the call",
    )


_CALL = "421f0b00-5c3e-4b8a-9a39-0b7f3e2c8d11"
_CALLER = "4:+14255550123"


def _example(event_id: str, event_type: str, time: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "id": f"{_CALL}:{event_id}",
        "call_id": _CALL,
        "type": event_type,
        "time": time,
        "data": dict(data),
    }


_SPECS: tuple[EventSpec, ...] = (
    EventSpec(
        type=CALL_STARTED,
        description="A call began: its audio format is known (at AudioMetadata when the URL "
        "says ?mode=, else at its first frame, DTMF tone or end)",
        publisher="gateway",
        id_format="{call_id}:started",
        id_pattern=r":started$",
        data=_closed(
            {
                "rate_hz": {
                    "enum": list(SUPPORTED_RATES_HZ),
                    "description": "sample rate of the call's PCM16 mono audio, in Hz",
                },
                "mode": {
                    "enum": list(get_args(Mode)),
                    "description": "mixed: one stream; unmixed: one per participant (channels 0-3)",
                },
            },
            "the call's audio format, and the labels its URL gave it",
            optional={
                name: {
                    "type": "string",
                    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$",
                    "description": f"the call's {name}, from the URL's ?{name}= (analytics)",
                }
                for name in ("tenant", "queue")
            },
        ),
        example=_example(
            "started",
            CALL_STARTED,
            "2025-03-14T09:26:47.612Z",
            {"rate_hz": 16000, "mode": "unmixed"},
        ),
    ),
    EventSpec(
        type=DTMF,
        description="A participant pressed a key (ACS DtmfData)",
        publisher="gateway",
        id_format="{call_id}:dtmf:{seq}",
        id_pattern=r":dtmf:[0-9]+$",
        data=_closed(
            {
                "tone": {"enum": list(DTMF_TONES), "description": "the key: 0-9, *, #, A-D"},
                "participant": _PARTICIPANT,
            },
            "one DTMF tone",
        ),
        example=_example(
            "dtmf:412", DTMF, "2025-03-14T09:26:55.852Z", {"tone": "5", "participant": _CALLER}
        ),
    ),
    EventSpec(
        type=SPEECH_STARTED,
        description="The voice activity detector heard an utterance start on one audio stream",
        publisher="transcribe worker",
        id_format="{call_id}:speech.started:{channel}:{onset_ms}",
        id_pattern=r":speech\.started:[0-3]:[0-9]+$",
        data=_speech_data("where the speech started"),
        example=_example(
            "speech.started:1:5960",
            SPEECH_STARTED,
            "2025-03-14T09:26:53.632Z",
            {"participantRawID": _CALLER, "channel": 1, "offset": 59600000},
        ),
    ),
    EventSpec(
        type=TRANSCRIPT,
        description="What was said in one utterance (ACS TranscriptionData): Intermediate "
        "results while it is spoken, one Final at its end",
        publisher="transcribe worker",
        id_format="{call_id}:transcript:{channel}:{onset_ms} (Final); "
        "{call_id}:transcript:{channel}:{onset_ms}:partial:{duration_ms} (Intermediate)",
        id_pattern=r":transcript:[0-3]:[0-9]+(:partial:[0-9]+)?$",
        data=_closed(
            {
                "text": {"type": "string", "description": "the recognised words"},
                "format": {"const": "display"},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "offset": _ticks("where the utterance's speech started"),
                "duration": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "from offset to the end of the last word, in 100-ns ticks",
                },
                "words": {
                    "type": "array",
                    "items": _closed(
                        {
                            "text": {"type": "string"},
                            "offset": _ticks("where the word starts"),
                            "duration": {
                                "type": "integer",
                                "minimum": 0,
                                "description": "in 100-ns ticks",
                            },
                        },
                        "one recognised word",
                    ),
                },
                "participantRawID": _PARTICIPANT,
                "resultStatus": {"enum": ["Intermediate", "Final"]},
            },
            "ACS TranscriptionData",
            optional={
                "redacted": {
                    "const": True,
                    "description": "on cs:insights in redaction mode (CS_REDACT=1): text and "
                    "words have each finding replaced by [TYPE]",
                }
            },
        ),
        example=_example(
            "transcript:1:5960",
            TRANSCRIPT,
            "2025-03-14T09:26:56.852Z",
            {
                "text": "please transfer me to the billing department",
                "format": "display",
                "confidence": 0.41,
                "offset": 59600000,
                "duration": 28100000,
                "words": [
                    {"text": "please", "offset": 59700000, "duration": 3100000},
                    {"text": "transfer", "offset": 62800000, "duration": 4900000},
                    {"text": "me", "offset": 67700000, "duration": 1600000},
                    {"text": "to", "offset": 69300000, "duration": 1400000},
                    {"text": "the", "offset": 70700000, "duration": 1500000},
                    {"text": "billing", "offset": 72200000, "duration": 5300000},
                    {"text": "department", "offset": 77500000, "duration": 10200000},
                ],
                "participantRawID": _CALLER,
                "resultStatus": "Final",
            },
        ),
    ),
    EventSpec(
        type=SPEECH_STOPPED,
        description="The utterance ended (after 500 ms without speech, at 20 s, when its channel "
        "passed to another participant, or at the call's end)",
        publisher="transcribe worker",
        id_format="{call_id}:speech.stopped:{channel}:{onset_ms}",
        id_pattern=r":speech\.stopped:[0-3]:[0-9]+$",
        data=_speech_data("where the speech stopped"),
        example=_example(
            "speech.stopped:1:5960",
            SPEECH_STOPPED,
            "2025-03-14T09:26:56.852Z",
            {"participantRawID": _CALLER, "channel": 1, "offset": 88200000},
        ),
    ),
    EventSpec(
        type=NLP_SENTIMENT,
        description="How positive or negative one final utterance sounds (VADER)",
        publisher="nlp worker",
        id_format="{call_id}:nlp.sentiment:{channel}:{onset_ms} (the utterance's)",
        id_pattern=_nlp_id("sentiment"),
        data=_closed(
            {
                "utterance": _UTTERANCE,
                "participant": _NULLABLE_PARTICIPANT,
                "score": {**_SCORE, "description": "VADER's compound score"},
                "label": {
                    "enum": ["negative", "neutral", "positive"],
                    "description": "score below -0.05, between, above 0.05",
                },
                "rolling": {
                    **_SCORE,
                    "description": "this participant's running level: an exponentially "
                    "weighted mean (alpha 0.3) of their utterances' scores so far",
                },
            },
            "the utterance's sentiment",
        ),
        example=_example(
            "nlp.sentiment:1:5960",
            NLP_SENTIMENT,
            "2025-03-14T09:26:56.871Z",
            {
                "utterance": f"{_CALL}:transcript:1:5960",
                "participant": _CALLER,
                "score": -0.6249,
                "label": "negative",
                "rolling": -0.3102,
            },
        ),
    ),
    EventSpec(
        type=NLP_KEY_PHRASES,
        description="The key phrases of one final utterance (YAKE), when it has any",
        publisher="nlp worker",
        id_format="{call_id}:nlp.key_phrases:{channel}:{onset_ms}",
        id_pattern=_nlp_id("key_phrases"),
        data=_closed(
            {
                "utterance": _UTTERANCE,
                "phrases": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 1,
                    "description": "most relevant first",
                },
            },
            "the utterance's key phrases",
        ),
        example=_example(
            "nlp.key_phrases:1:5960",
            NLP_KEY_PHRASES,
            "2025-03-14T09:26:56.871Z",
            {
                "utterance": f"{_CALL}:transcript:1:5960",
                "phrases": ["billing department", "transfer"],
            },
        ),
    ),
    EventSpec(
        type=NLP_INTENT,
        description="One intent of the --intents file that a final utterance expresses",
        publisher="nlp worker",
        id_format="{call_id}:nlp.intent:{channel}:{onset_ms}:{name}",
        id_pattern=_nlp_id("intent", ":[^:]+"),
        data=_closed(
            {
                "utterance": _UTTERANCE,
                "name": {"type": "string", "minLength": 1, "description": "the intent's name"},
                "score": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "how closely it matched (at least the threshold)",
                },
            },
            "the intent",
        ),
        example=_example(
            "nlp.intent:1:5960:billing_question",
            NLP_INTENT,
            "2025-03-14T09:26:56.871Z",
            {
                "utterance": f"{_CALL}:transcript:1:5960",
                "name": "billing_question",
                "score": 0.86,
            },
        ),
    ),
    EventSpec(
        type=NLP_PII,
        description="Personal data found in one final utterance, and the utterance redacted",
        publisher="nlp worker",
        id_format="{call_id}:nlp.pii:{channel}:{onset_ms}",
        id_pattern=_nlp_id("pii"),
        data=_closed(
            {
                "utterance": _UTTERANCE,
                "participant": _NULLABLE_PARTICIPANT,
                "redacted_text": {
                    "type": "string",
                    "description": "the text with each finding replaced by [TYPE]",
                },
                "entities": {
                    "type": "array",
                    "minItems": 1,
                    "items": _closed(
                        {
                            "type": {
                                "type": "string",
                                "description": "card_number, phone_number, email, ssn, iban, "
                                "digits (six or more), ...",
                            },
                            "start": {"type": "integer", "minimum": 0},
                            "end": {"type": "integer", "minimum": 0},
                        },
                        "one finding: [start, end) in the transcript's text",
                    ),
                },
            },
            "what was found, and where",
        ),
        example=_example(
            "nlp.pii:1:5960",
            NLP_PII,
            "2025-03-14T09:26:56.871Z",
            {
                "utterance": f"{_CALL}:transcript:1:5960",
                "participant": _CALLER,
                "redacted_text": "my card number is [CARD_NUMBER]",
                "entities": [{"type": "card_number", "start": 18, "end": 97}],
            },
        ),
    ),
    EventSpec(
        type=PLAYBACK_MARK,
        description="Playback into the call reached a mark a worker queued on cs:call:{id}:out",
        publisher="egress (gateway)",
        id_format="{call_id}:mark:{name}:{n} (n counts the call's marks on its connection)",
        id_pattern=r":mark:[\s\S]*:[0-9]+$",
        data=_closed(
            {"name": {"type": "string", "description": "the mark's name, as the worker gave it"}},
            "the mark",
        ),
        example=_example(
            "mark:greeting-done:0",
            PLAYBACK_MARK,
            "2025-03-14T09:26:51.020Z",
            {"name": "greeting-done"},
        ),
    ),
    EventSpec(
        type=CALL_ENDED,
        description="The call's socket closed and its inbound audio is complete; worker results "
        "may still follow (each kind's {kind}.done says when its results are complete)",
        publisher="gateway",
        id_format="{call_id}:ended",
        id_pattern=r":ended$",
        data=_closed(
            {
                "reason": {
                    "type": "string",
                    "minLength": 1,
                    "description": "normal, closed, oversize, bus_unavailable, closed_{code}, "
                    "or the kind of protocol error that closed it (malformed, ...)",
                },
                "frames": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "inbound entries published: audio frames and DTMF tones",
                },
            },
            "why and after how much the call ended",
        ),
        example=_example(
            "ended", CALL_ENDED, "2025-03-14T09:30:02.318Z", {"reason": "normal", "frames": 9763}
        ),
    ),
    EventSpec(
        type=NLP_SUMMARY,
        description="The call in figures, once its last transcript is in",
        publisher="nlp worker",
        id_format="{call_id}:nlp.summary",
        id_pattern=r":nlp\.summary$",
        data=_closed(
            {
                "duration_s": {"type": "number", "minimum": 0},
                "utterances": {"type": "integer", "minimum": 0},
                "participants": {
                    "type": "object",
                    "description": 'by participantRawID ("" on a mixed call)',
                    "additionalProperties": _closed(
                        {
                            "talk_time_s": {"type": "number", "minimum": 0},
                            "turns": {"type": "integer", "minimum": 0},
                            "interruptions": {
                                "type": "integer",
                                "minimum": 0,
                                "description": "turns begun before the other speaker stopped",
                            },
                            "mean_sentiment": {"oneOf": [_SCORE, {"type": "null"}]},
                        },
                        "one participant",
                    ),
                },
                "silence_ratio": {
                    "oneOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}],
                    "description": "the share of the call in which nobody spoke",
                },
                "sentiment_trend": _closed(
                    {
                        "direction": {"enum": ["improving", "declining", "steady", None]},
                        "first_half": {"oneOf": [_SCORE, {"type": "null"}]},
                        "second_half": {"oneOf": [_SCORE, {"type": "null"}]},
                    },
                    "mean sentiment of the first and second half of the utterances",
                ),
                "key_phrases": {"type": "array", "items": {"type": "string"}},
                "intents": {
                    "type": "array",
                    "items": _closed(
                        {
                            "name": {"type": "string"},
                            "score": {"type": "number", "minimum": 0, "maximum": 1},
                            "count": {"type": "integer", "minimum": 1},
                            "first_utterance": _UTTERANCE,
                        },
                        "an intent detected, its best score and how often",
                    ),
                },
                "dtmf": {
                    "type": ["string", "null"],
                    "description": "the keys pressed, in order; null in redaction mode",
                },
                "dtmf_count": {"type": "integer", "minimum": 0},
            },
            "the call's summary",
        ),
        example=_example(
            "nlp.summary",
            NLP_SUMMARY,
            "2025-03-14T09:30:02.602Z",
            {
                "duration_s": 191.3,
                "utterances": 42,
                "participants": {
                    _CALLER: {
                        "talk_time_s": 71.2,
                        "turns": 19,
                        "interruptions": 3,
                        "mean_sentiment": -0.211,
                    },
                    "8:acs:agent": {
                        "talk_time_s": 64.8,
                        "turns": 18,
                        "interruptions": 1,
                        "mean_sentiment": 0.305,
                    },
                },
                "silence_ratio": 0.289,
                "sentiment_trend": {
                    "direction": "improving",
                    "first_half": -0.184,
                    "second_half": 0.197,
                },
                "key_phrases": ["billing department", "late fee", "refund"],
                "intents": [
                    {
                        "name": "billing_question",
                        "score": 0.86,
                        "count": 2,
                        "first_utterance": f"{_CALL}:transcript:1:5960",
                    }
                ],
                "dtmf": "412",
                "dtmf_count": 3,
            },
        ),
    ),
    EventSpec(
        type=AGENT_TURN,
        description="The voice agent said something (its greeting or a reply to the caller): "
        "published when its audio has played, or the caller barged in, or hung up",
        publisher="agent worker",
        id_format="{call_id}:agent.turn:{turn}",
        id_pattern=r":agent\.turn:[1-9][0-9]*$",
        data=_closed(
            {
                "turn": {"type": "integer", "minimum": 1, "description": "1 for the greeting"},
                "text": {
                    "type": "string",
                    "description": "what the agent said (the sentences queued before a barge-in)",
                },
                "intent": {
                    "type": ["string", "null"],
                    "description": "the caller's intent it answered (the dialog flow's name)",
                },
                "action": {
                    "enum": [None, "transfer", "end"],
                    "description": "transfer: to a human; end: the agent said goodbye",
                },
                "reply_to": {
                    "type": ["string", "null"],
                    "description": "the final transcript or DTMF event it answered; null for "
                    "the greeting",
                },
                "ended": {
                    "enum": ["played", "barged_in", "hung_up"],
                    "description": "played to its end; stopped by the caller talking over it; "
                    "cut off by the call's end",
                },
                "interrupted": {"type": "boolean", "description": "ended is barged_in"},
                "holds": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "times a sound from the caller held it a moment (a "
                    "backchannel, a cough: it played on; or the barge-in that stopped it)",
                },
                "offset": _ticks("when its audio began to play"),
                "duration": _ticks("how long it played (to the barge-in or hang-up if cut)"),
                "audio_ms": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "length of the reply's audio",
                },
                "heard_at_ms": {
                    "type": ["integer", "null"],
                    "description": "epoch ms the agent took up the event it answered (null for "
                    "the greeting)",
                },
                "first_audio_at_ms": {
                    "type": ["integer", "null"],
                    "description": "epoch ms its first audio was queued into the call (null if "
                    "none was)",
                },
                "first_audio_ms": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "description": "from the decision to the first sentence's audio queued "
                    "(its synthesis)",
                },
                "synthesis_ms": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "description": "synthesizing the whole reply",
                },
            },
            "one turn of the agent",
        ),
        example=_example(
            "agent.turn:2",
            AGENT_TURN,
            "2025-03-14T09:26:55.304Z",
            {
                "turn": 2,
                "text": "Sure. What is your account number?",
                "intent": "billing",
                "action": None,
                "reply_to": f"{_CALL}:transcript:1:5960",
                "ended": "played",
                "interrupted": False,
                "holds": 0,
                "offset": 80_120_000,
                "duration": 21_400_000,
                "audio_ms": 2140,
                "heard_at_ms": 1741944412022,
                "first_audio_at_ms": 1741944412118,
                "first_audio_ms": 96.4,
                "synthesis_ms": 171.0,
            },
        ),
    ),
    EventSpec(
        type=DONE_FAMILY,
        description="A worker kind has published its last result for the call (one per kind "
        "that served it: transcribe.done, echo.done, ...)",
        publisher="worker runtime (every kind)",
        id_format="{call_id}:{kind}.done",
        id_pattern=r":[a-z][a-z0-9_-]{0,31}\.done$",  # for one kind: that kind's
        data=_done_data(None),
        example=_example(
            "transcribe" + DONE_SUFFIX,
            "transcribe" + DONE_SUFFIX,
            "2025-03-14T09:30:02.471Z",
            {"kind": "transcribe", "reason": "normal"},
        ),
        family=True,
    ),
    EventSpec(
        type=WORKER_FAILED,
        description="A worker kind gave the call up after CS_WORKER_MAX_ATTEMPTS failed attempts",
        publisher="worker runtime (every kind)",
        id_format="{call_id}:worker.failed:{kind}",
        # Earlier releases made {call_id}:{kind}:failed; both are stable.
        id_pattern=r"(:worker\.failed:[a-z][a-z0-9_-]{0,31}|:[a-z][a-z0-9_-]{0,31}:failed)$",
        data=_closed(
            {
                "kind": _KIND_FIELD,
                "attempts": {"type": "integer", "minimum": 1, "description": "attempts made"},
                "error": {
                    "type": "string",
                    "description": 'the last error ("its owner stopped answering" after crashes)',
                },
            },
            "the kind that gave up, and why",
        ),
        example=_example(
            "worker.failed:sentiment",
            WORKER_FAILED,
            "2025-03-14T09:27:31.904Z",
            {"kind": "sentiment", "attempts": 5, "error": "TimeoutError: model server timed out"},
        ),
    ),
)

EVENTS: Mapping[str, EventSpec] = MappingProxyType(
    {spec.type: spec for spec in _SPECS if not spec.family}
)
"""The fixed event types, by name."""

FAMILIES: Mapping[str, EventSpec] = MappingProxyType(
    {spec.type: spec for spec in _SPECS if spec.family}
)
"""Families of types, by their placeholder name: ``{kind}.done``."""


def specs() -> tuple[EventSpec, ...]:
    """Every entry of the catalogue (types and families), in the order of a call's life."""
    return _SPECS


def done_type(kind: str) -> str:
    """``{kind}.done`` for a worker kind; ValueError for a name that is not a kind's."""
    if not _KIND.fullmatch(kind):
        raise ValueError(f"a worker kind is 1-32 of a-z, 0-9, _ and -, from a letter; got {kind!r}")
    return kind + DONE_SUFFIX


def done_kind(event_type: str) -> str | None:
    """The worker kind of a ``{kind}.done`` type; None for any other type."""
    match = _DONE.fullmatch(event_type)
    return match.group(1) if match else None


def spec_for(event_type: str) -> EventSpec | None:
    """The catalogue's entry for a type (any ``{kind}.done`` resolves to its family)."""
    spec = EVENTS.get(event_type)
    if spec is None and done_kind(event_type) is not None:
        spec = FAMILIES[DONE_FAMILY]
    return spec


def schema_for(event_type: str) -> dict[str, Any] | None:
    """JSON Schema (draft 2020-12) of a whole event of this type; None when it is not in the
    catalogue. A fresh copy: the caller may change it."""
    schema = _schema(event_type)
    return None if schema is None else copy.deepcopy(schema)


def envelope_schema(event_type: str | None = None) -> dict[str, Any]:
    """JSON Schema of the envelope alone, ``data`` any object: for a worker's own types.
    With ``event_type`` the ``type`` must be that one."""
    return _event_schema(
        event_type,
        {"type": "object"},
        "an event: the envelope of shared/events.py, its data not described here",
    )


@lru_cache(maxsize=256)
def _schema(event_type: str) -> dict[str, Any] | None:
    spec = spec_for(event_type)
    return None if spec is None else spec.schema(event_type)


class InvalidEvent(CallstreamError, ValueError):
    """An event does not match its schema, or its type is not one the caller expects."""

    def __init__(self, message: str, event_type: str | None, problems: tuple[str, ...]) -> None:
        super().__init__(message)
        self.event_type = event_type
        self.problems = problems  # one line each: "data.rate_hz: 8000 is not one of …"


def validate(
    event: Mapping[str, Any] | str | bytes,
    *,
    allow: Collection[str] = (),
    allow_unknown: bool = False,
) -> None:
    """Check one event (decoded, or its JSON) against the catalogue; raise :class:`InvalidEvent`
    naming its type and every problem found.

    A type not in the catalogue is an error unless it is in ``allow`` or ``allow_unknown`` is
    set: then only its envelope is checked. Needs the ``jsonschema`` package (dev extra).
    """
    obj: Any = event
    if isinstance(event, str | bytes):
        try:
            obj = json.loads(event)
        except ValueError as exc:
            raise InvalidEvent(f"event is not JSON: {exc}", None, (str(exc),)) from exc
    if not isinstance(obj, Mapping):
        problem = f"an event is a JSON object, got {type(obj).__name__}"
        raise InvalidEvent(problem, None, (problem,))
    event_type = obj.get("type")
    if not isinstance(event_type, str):
        _check(obj, None, "event without a string type", known=False)
        return
    known = _schema(event_type) is not None
    if not known and not (allow_unknown or event_type in allow):
        close = difflib.get_close_matches(event_type, list(EVENTS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problem = f"unknown event type {event_type!r}{hint}: not in the catalogue"
        raise InvalidEvent(
            f"{problem}; pass allow={{...}} or allow_unknown=True for a worker's own types",
            event_type,
            (problem,),
        )
    _check(obj, event_type, f"{event_type} event {obj.get('id')!r}", known=known)


def _check(obj: Mapping[str, Any], event_type: str | None, what: str, *, known: bool) -> None:
    validator = _validator(event_type, known)
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    problems = tuple(_problem(error) for error in errors)
    raise InvalidEvent(f"{what}: " + "; ".join(problems), event_type, problems)


def _problem(error: Any) -> str:
    """One line: where in the event (``data.words.0.offset``), and what is wrong there."""
    where = ".".join(str(part) for part in error.absolute_path) or "(envelope)"
    message = str(error.message)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "pattern" and "description" in schema:
        message = f"{message} ({schema['description']})"
    return f"{where}: {message}"


@lru_cache(maxsize=256)
def _validator(event_type: str | None, known: bool) -> Any:
    """A jsonschema validator of the type's schema (``known``), or of the envelope alone."""
    schema = _schema(event_type) if known and event_type is not None else None
    return _validator_class()(schema or envelope_schema(event_type))


@lru_cache(maxsize=1)
def _validator_class() -> Any:
    try:
        # Lazily: jsonschema is a dev dependency, the runtime never needs it.
        from jsonschema import (  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415
            Draft202012Validator,
        )
    except ImportError as exc:
        raise ImportError(
            "callstream.shared.catalogue.validate needs the jsonschema package "
            "(pip install 'callstream[dev]' or pip install jsonschema)"
        ) from exc
    return Draft202012Validator
