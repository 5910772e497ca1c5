"""The event catalogue: its schemas, its examples, validation, and docs/events.md (pure)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]

from callstream.shared.catalogue import (
    AGENT_TURN,
    CALL_ENDED,
    CALL_STARTED,
    DONE_FAMILY,
    DTMF,
    DTMF_TONES,
    EVENTS,
    FAMILIES,
    NLP_INTENT,
    NLP_KEY_PHRASES,
    NLP_PII,
    NLP_SENTIMENT,
    NLP_SUMMARY,
    PLAYBACK_MARK,
    SPEECH_STARTED,
    SPEECH_STOPPED,
    TRANSCRIPT,
    WORKER_FAILED,
    EventSpec,
    InvalidEvent,
    done_kind,
    done_type,
    envelope_schema,
    schema_for,
    spec_for,
    specs,
    validate,
)
from callstream.shared.errors import CallstreamError, MalformedMessage
from callstream.shared.events import Event, parse_iso_ms
from callstream.shared.protocols.acs import DtmfData, parse_inbound
from callstream.workers.stt import transcript as stt_transcript
from callstream.workers.stt.engine import Result, Word
from callstream.workers.testing import MemoryEventOut
from callstream.workers.transcribe import Transcriber
from tests.unit.workers.test_transcriber import Echoing, frames_at
from tests.unit.workers.test_vad import quiet, voiced

DOC = Path(__file__).resolve().parents[3] / "docs" / "events.md"
ALL_TYPES = [spec.type for spec in specs()]


def example(event_type: str) -> dict[str, Any]:
    """A fresh copy of the catalogue's example of a type (or family)."""
    spec = EVENTS.get(event_type) or FAMILIES[event_type]
    return copy.deepcopy(dict(spec.example))


def built(obj: dict[str, Any]) -> str:
    """``obj`` as the project's own Event class serialises it."""
    return Event(
        obj["id"], obj["call_id"], obj["type"], parse_iso_ms(obj["time"]) or 0, obj["data"]
    ).to_json()


# --------------------------------------------------------------------------- the catalogue


def test_the_catalogue_names_every_event_type_once() -> None:
    assert ALL_TYPES == [
        CALL_STARTED,
        DTMF,
        SPEECH_STARTED,
        TRANSCRIPT,
        SPEECH_STOPPED,
        NLP_SENTIMENT,
        NLP_KEY_PHRASES,
        NLP_INTENT,
        NLP_PII,
        PLAYBACK_MARK,
        CALL_ENDED,
        NLP_SUMMARY,
        AGENT_TURN,
        DONE_FAMILY,
        WORKER_FAILED,
    ]
    assert len(set(ALL_TYPES)) == len(ALL_TYPES)
    assert set(EVENTS) | set(FAMILIES) == set(ALL_TYPES)
    assert list(FAMILIES) == ["{kind}.done"]
    # The transcribe worker's names are the catalogue's.
    assert (stt_transcript.TRANSCRIPT, stt_transcript.SPEECH_STARTED) == (
        TRANSCRIPT,
        SPEECH_STARTED,
    )
    assert stt_transcript.SPEECH_STOPPED == SPEECH_STOPPED


@pytest.mark.parametrize("spec", specs(), ids=lambda s: s.type)
def test_every_entry_is_described_and_its_schema_is_valid_draft_2020_12(spec: EventSpec) -> None:
    assert spec.description
    assert "\n" not in spec.description
    assert spec.publisher
    schema = schema_for(spec.example["type"])
    assert schema is not None
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["data"]["additionalProperties"] is False


@pytest.mark.parametrize("spec", specs(), ids=lambda s: s.type)
def test_every_example_validates_also_as_the_event_class_writes_it(spec: EventSpec) -> None:
    validate(spec.example)
    text = built(dict(spec.example))
    validate(text)
    assert json.loads(text) == spec.example  # the example is exactly what Event.to_json makes
    assert spec.example["id"].startswith(spec.example["call_id"] + ":")
    assert re.search(spec.id_pattern, spec.example["id"])


def test_the_envelope_schema_is_valid_and_takes_any_data() -> None:
    Draft202012Validator.check_schema(envelope_schema())
    Draft202012Validator.check_schema(envelope_schema("shout"))
    event = example(DTMF) | {"type": "shout", "data": {"anything": [1, 2]}}
    assert list(Draft202012Validator(envelope_schema("shout")).iter_errors(event)) == []
    assert list(Draft202012Validator(envelope_schema()).iter_errors(event)) == []
    errors = list(Draft202012Validator(envelope_schema("other")).iter_errors(event))
    assert [e.absolute_path[0] for e in errors] == ["type"]


def test_schema_for_an_unknown_type_is_none_and_results_are_copies() -> None:
    assert schema_for("shout") is None
    assert spec_for("shout") is None
    schema = schema_for(DTMF)
    assert schema is not None
    schema["properties"]["data"]["properties"]["tone"] = {}
    assert schema_for(DTMF) != schema  # changing a result does not change the catalogue
    validate(example(DTMF))
    with pytest.raises(InvalidEvent, match="tone"):
        validate(example(DTMF) | {"data": {"tone": "x", "participant": ""}})


# --------------------------------------------------------------------------- {kind}.done


@pytest.mark.parametrize("kind", ["transcribe", "echo", "my-kind_2", "a", "x" * 32])
def test_any_kind_done_resolves_to_the_done_family(kind: str) -> None:
    event_type = done_type(kind)
    assert event_type == f"{kind}.done"
    assert done_kind(event_type) == kind
    assert spec_for(event_type) is FAMILIES[DONE_FAMILY]
    schema = schema_for(event_type)
    assert schema is not None
    Draft202012Validator.check_schema(schema)
    assert schema["properties"]["type"] == {"const": event_type}
    event = example(DONE_FAMILY) | {
        "id": f"c:{event_type}",
        "type": event_type,
        "data": {"kind": kind, "reason": "normal"},
    }
    validate(event)
    validate(built(event))


@pytest.mark.parametrize(
    "event_type",
    [
        ".done",
        "Echo.done",
        "1echo.done",
        "echo.done.x",
        "echo.Done",
        "echo.done\n",
        "x" * 33 + ".done",
        "echo",
        "call.ended",
        "echo:done",
        "my kind.done",
    ],
)
def test_types_that_are_not_a_kinds_done_do_not_resolve(event_type: str) -> None:
    assert done_kind(event_type) is None
    if event_type not in EVENTS:
        assert schema_for(event_type) is None
        with pytest.raises(InvalidEvent, match="unknown event type"):
            validate(example(DONE_FAMILY) | {"type": event_type})


@pytest.mark.parametrize("kind", ["", "Echo", "9lives", "echo\n", "x" * 33, "a.b"])
def test_done_type_refuses_what_is_not_a_kind_name(kind: str) -> None:
    with pytest.raises(ValueError, match="worker kind"):
        done_type(kind)


def test_a_done_event_names_its_own_kind() -> None:
    wrong = example(DONE_FAMILY) | {"type": "echo.done"}  # data.kind is "transcribe"
    with pytest.raises(InvalidEvent) as caught:
        validate(wrong)
    assert caught.value.event_type == "echo.done"
    assert "data.kind" in str(caught.value)
    assert "'echo' was expected" in str(caught.value)


def test_the_family_schema_needs_a_concrete_type() -> None:
    with pytest.raises(ValueError, match=r"transcribe\.done"):
        FAMILIES[DONE_FAMILY].schema()
    with pytest.raises(ValueError, match=r"not of 'dtmf'"):
        EVENTS[CALL_STARTED].schema(DTMF)


# --------------------------------------------------------------------------- rejections


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = obj
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = obj
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        del target[int(last) if last.isdigit() else last]

    return change


REJECTED: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    # (type, what, change, text the error must contain)
    (CALL_STARTED, "missing data field", _delete("data.mode"), "data: 'mode' is a required"),
    (CALL_STARTED, "unsupported rate", _set("data.rate_hz", 8000), "data.rate_hz: 8000 is not"),
    (CALL_STARTED, "rate as text", _set("data.rate_hz", "16000"), "data.rate_hz"),
    (CALL_STARTED, "unknown mode", _set("data.mode", "stereo"), "data.mode: 'stereo'"),
    (CALL_STARTED, "extra data field", _set("data.codec", "pcm"), "'codec' was unexpected"),
    (CALL_STARTED, "extra envelope key", _set("extra", 1), "(envelope): Additional properties"),
    (CALL_STARTED, "id of another type", _set("id", "c:ended"), "id: 'c:ended' does not match"),
    (CALL_STARTED, "missing envelope key", _delete("call_id"), "'call_id' is a required"),
    (CALL_STARTED, "bad call id", _set("call_id", "a call"), "call_id: 'a call' does not match"),
    (CALL_STARTED, "another version", _set("v", 2), "v: 1 was expected"),
    (CALL_STARTED, "data not an object", _set("data", []), "data: [] is not of type 'object'"),
    (CALL_STARTED, "time without ms", _set("time", "2025-03-14T09:26:47Z"), "time: "),
    (CALL_STARTED, "time with offset", _set("time", "2025-03-14T09:26:47.612+00:00"), "time: "),
    (CALL_STARTED, "time with a space", _set("time", "2025-03-14 09:26:47.612Z"), "ISO-8601"),
    (CALL_STARTED, "month 13", _set("time", "2025-13-14T09:26:47.612Z"), "time: "),
    (CALL_STARTED, "time as epoch ms", _set("time", 1741944407612), "time: 1741944407612 is not"),
    (DTMF, "lower-case tone", _set("data.tone", "a"), "data.tone: 'a' is not one of"),
    (DTMF, "two tones", _set("data.tone", "12"), "data.tone"),
    (DTMF, "no participant", _delete("data.participant"), "'participant' is a required"),
    (SPEECH_STARTED, "fifth channel", _set("data.channel", 4), "data.channel: 4 is greater"),
    (SPEECH_STOPPED, "negative offset", _set("data.offset", -1), "data.offset: -1 is less"),
    (SPEECH_STOPPED, "offset in seconds", _set("data.offset", 8.82), "data.offset: 8.82 is not"),
    (TRANSCRIPT, "lower-case status", _set("data.resultStatus", "final"), "data.resultStatus"),
    (TRANSCRIPT, "confidence > 1", _set("data.confidence", 41), "data.confidence: 41 is greater"),
    (TRANSCRIPT, "other format", _set("data.format", "lexical"), "data.format: 'display' was"),
    (TRANSCRIPT, "word without duration", _delete("data.words.2.duration"), "data.words.2: "),
    (TRANSCRIPT, "word as text", _set("data.words.0", "please"), "data.words.0: 'please' is not"),
    (TRANSCRIPT, "id of a speech event", _set("id", "c:speech.started:1:5960"), "id: "),
    (PLAYBACK_MARK, "mark without name", _delete("data.name"), "'name' is a required"),
    (CALL_ENDED, "negative frames", _set("data.frames", -1), "data.frames: -1 is less"),
    (CALL_ENDED, "empty reason", _set("data.reason", ""), "data.reason: '' should be non-empty"),
    (DONE_FAMILY, "no reason", _delete("data.reason"), "'reason' is a required"),
    (DONE_FAMILY, "id of another kind", _set("id", "c:echo.done"), "id: 'c:echo.done' does not"),
    (WORKER_FAILED, "no attempt", _set("data.attempts", 0), "data.attempts: 0 is less"),
    (WORKER_FAILED, "attempts as bool", _set("data.attempts", True), "data.attempts: True is not"),
    (WORKER_FAILED, "bad kind name", _set("data.kind", "Sentiment"), "data.kind: 'Sentiment'"),
]


@pytest.mark.parametrize(
    ("event_type", "change", "expected"),
    [(t, change, expected) for t, _, change, expected in REJECTED],
    ids=[f"{t}: {what}" for t, what, _, _ in REJECTED],
)
def test_a_wrong_event_is_rejected_naming_its_type_and_the_problem(
    event_type: str, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    event = example(event_type)
    validate(event)  # the unchanged example passes: what fails below is the change
    change(event)
    with pytest.raises(InvalidEvent) as caught:
        validate(event)
    message = str(caught.value)
    assert message.startswith(f"{event['type']} event ")
    assert expected in message
    assert caught.value.event_type == event["type"]
    assert any(expected.split(": ", maxsplit=1)[0] in problem for problem in caught.value.problems)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, CallstreamError)
    with pytest.raises(InvalidEvent):  # as JSON text too
        validate(json.dumps(event))


def test_a_bad_time_is_explained() -> None:
    event = example(DTMF) | {"time": "2025-03-14T09:26:55Z"}
    with pytest.raises(InvalidEvent, match="ISO-8601 UTC with milliseconds"):
        validate(event)


def test_every_problem_is_reported_at_once() -> None:
    event = example(CALL_STARTED) | {"extra": 1, "data": {"rate_hz": 8000}}
    with pytest.raises(InvalidEvent) as caught:
        validate(event)
    assert len(caught.value.problems) == 3  # the extra key, the rate, the missing mode


@pytest.mark.parametrize(
    ("event_type", "suggestion"),
    [("dtfm", "dtmf"), ("call.start", "call.started"), ("transcripts", "transcript")],
)
def test_an_unknown_type_is_rejected_with_the_nearest_known_one(
    event_type: str, suggestion: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate(example(DTMF) | {"type": event_type})
    assert f"unknown event type {event_type!r}" in str(caught.value)
    assert f"did you mean {suggestion!r}" in str(caught.value)
    assert caught.value.event_type == event_type


def test_types_of_a_kind_of_ones_own_pass_when_allowed_with_their_envelope_checked() -> None:
    shout = example(DTMF) | {"type": "shout", "id": "c:shout:1", "data": {"loud": True}}
    with pytest.raises(InvalidEvent, match="unknown event type 'shout'"):
        validate(shout)
    validate(shout, allow={"shout"})
    validate(shout, allow_unknown=True)
    with pytest.raises(InvalidEvent, match="unknown event type 'shout'"):
        validate(shout, allow={"whisper"})
    with pytest.raises(InvalidEvent, match=r"shout event 'c:shout:1': \(envelope\): 'call_id'"):
        validate({k: v for k, v in shout.items() if k != "call_id"}, allow={"shout"})
    with pytest.raises(InvalidEvent, match="time: "):
        validate(shout | {"time": "now"}, allow_unknown=True)
    # Allowing a known type does not loosen its schema.
    with pytest.raises(InvalidEvent, match=r"data\.tone"):
        validate(example(DTMF) | {"data": {"tone": "E", "participant": ""}}, allow={DTMF})


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("{not json", "not JSON"),
        (b"[1, 2]", "a JSON object, got list"),
        ('"dtmf"', "a JSON object, got str"),
        ({"v": 1, "type": 5}, "event without a string type: (envelope): "),
        ({}, "'type' is a required property"),
    ],
)
def test_what_is_not_an_event_at_all_is_rejected(event: Any, expected: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate(event)
    assert expected in str(caught.value)
    assert caught.value.event_type is None


# --------------------------------------------------------------------------- real producers


def test_the_codecs_tones_are_the_catalogues() -> None:
    accepted = set()
    for tone in "0123456789*#ABCDabcdEe9":
        text = json.dumps({"kind": "DtmfData", "dtmfData": {"data": tone}})
        try:
            parsed = parse_inbound(text)
        except MalformedMessage:
            continue
        assert isinstance(parsed, DtmfData)
        accepted.add(parsed.tone)
    assert accepted == set(DTMF_TONES)


@given(
    time_ms=st.integers(0, 253_402_300_799_999),  # to the end of year 9999
    call_id=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,99}(~[0-9]{1,3})?\Z"),
    seq=st.integers(0, 2**40),
    tone=st.sampled_from(DTMF_TONES),
    participant=st.text(max_size=40),
)
def test_dtmf_events_as_the_gateway_makes_them_validate(
    time_ms: int, call_id: str, seq: int, tone: str, participant: str
) -> None:
    event = Event(
        f"{call_id}:dtmf:{seq}", call_id, DTMF, time_ms, {"tone": tone, "participant": participant}
    )
    validate(event.to_json())  # fmt: skip


def test_the_gateway_egress_and_runtime_events_validate_as_their_code_makes_them() -> None:
    """The shapes of ingress/server.py, egress/hub.py and workers/runtime.py (built here: those
    need a socket or Redis to run)."""
    call, now = "c-1", 1_741_944_407_612
    events = [
        Event(f"{call}:started", call, CALL_STARTED, now, {"rate_hz": 24000, "mode": "mixed"}),
        Event(f"{call}:dtmf:0", call, DTMF, now, {"tone": "#", "participant": ""}),
        Event(f"{call}:mark:done: all:3", call, PLAYBACK_MARK, now, {"name": "done: all"}),
        Event(f"{call}:ended", call, CALL_ENDED, now, {"reason": "closed_4000", "frames": 0}),
        Event(f"{call}:worker.failed:echo", call, WORKER_FAILED, now,
              {"kind": "echo", "attempts": 5, "error": "its owner stopped answering"}),
        Event(f"{call}:echo:failed", call, WORKER_FAILED, now,  # the id of earlier releases
              {"kind": "echo", "attempts": 1, "error": "RuntimeError: boom"}),
    ]  # fmt: skip
    # A handler's events and the runtime's {kind}.done get their ids from the events port.
    port = MemoryEventOut(call)
    events.append(port.publish(done_type("echo"), {"kind": "echo", "reason": "inbound_idle"}))
    for event in events:
        validate(event.to_json())


def test_transcription_data_as_the_worker_makes_it_validates() -> None:
    port = MemoryEventOut("c")
    words = (Word("hello", 120, 300), Word("there", 430, 250))
    results = [Result("hello there", final, 100, 580, 0.912345, words) for final in (False, True)]
    results.append(Result("", False, 0, 0, 0.0))
    for result in results:
        data = stt_transcript.transcription_data(result, "4:+1")
        key = stt_transcript.transcript_key(2, result)
        validate(port.publish(TRANSCRIPT, data, key=key, time_ms=1_741_944_407_612).to_json())
    assert len(port.events) == 3


class Talking(Echoing):
    """The stand-in engine of test_transcriber, with an intermediate result per feed."""

    def feed(self, pcm: bytes) -> list[Result]:
        super().feed(pcm)
        return [Result("wor", False, self.speech_ms, self.fed, 0.5, (Word("wor", 0, self.fed),))]


def test_every_event_the_transcriber_publishes_validates() -> None:
    core = Transcriber("call-7", 16000, Talking)
    frames = quiet(30) + voiced(60) + quiet(40) + voiced(30)  # two utterances, the second open
    port = MemoryEventOut("call-7")  # makes the ids as the worker's events port does
    for out in core.process(frames_at(0, frames, 0), ended=True):
        port.publish(out.type, out.data, key=out.key, time_ms=out.time_ms)
    types = [event.type for event in port.events]
    assert types.count(SPEECH_STARTED) == types.count(SPEECH_STOPPED) == 2
    statuses = {e.data["resultStatus"] for e in port.events if e.type == TRANSCRIPT}
    assert statuses == {"Intermediate", "Final"}
    for event in port.events:
        validate(event.to_json())


# --------------------------------------------------------------------------- without jsonschema


def test_the_catalogue_imports_and_serves_schemas_without_jsonschema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import jsonschema now fails
    spec = importlib.util.find_spec("callstream.shared.catalogue")
    assert spec is not None
    assert spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.schema_for(DTMF) == schema_for(DTMF)
    with pytest.raises(ImportError, match="needs the jsonschema package"):
        fresh.validate(example(DTMF))


# --------------------------------------------------------------------------- docs/events.md


def _doc_examples() -> dict[str, Any]:
    """``### `type` `` headings of docs/events.md and the first JSON block under each."""
    text = DOC.read_text()
    found: dict[str, Any] = {}
    for match in re.finditer(r"^### `([^`]+)`\n(.*?)^```json\n(.*?)^```$", text, re.M | re.S):
        assert "###" not in match.group(2), f"no example under {match.group(1)}"
        found[match.group(1)] = json.loads(match.group(3))
    return found


def test_the_docs_show_every_type_with_the_catalogues_example() -> None:
    examples = _doc_examples()
    assert list(examples) == ALL_TYPES
    for spec in specs():
        assert examples[spec.type] == spec.example, spec.type


def test_the_docs_table_lists_every_type() -> None:
    rows = re.findall(r"^\| `([^`]+)` \| ", DOC.read_text(), re.M)
    assert [row for row in rows if row in ALL_TYPES] == ALL_TYPES


def test_the_docs_python_consumer_compiles() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), re.M | re.S)
    assert any("xreadgroup" in block for block in blocks)
    for block in blocks:
        compile(block, str(DOC), "exec")
    consumer = next(block for block in blocks if "xreadgroup" in block)
    assert '"cs:insights"' in consumer
    assert 'json.loads(fields[b"event"])' in consumer
    assert 'seen[event["id"]]' in consumer  # duplicates are dropped by id
