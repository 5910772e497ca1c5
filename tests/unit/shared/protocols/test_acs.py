"""ACS codec: parsing, validation and round trips (pure, no I/O)."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.shared.errors import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    InvalidFormat,
    InvalidFrame,
    MalformedMessage,
    OutOfOrder,
    ProtocolError,
    UnknownKind,
)
from callstream.shared.protocols.acs import (
    AudioData,
    AudioMetadata,
    DtmfData,
    InboundSession,
    OutboundAudio,
    StopAudio,
    build_audio_data,
    build_stop_audio,
    parse_inbound,
    parse_outbound,
)


def metadata(rate: int = 16000, length: int | None = None, **extra: Any) -> str:
    body = {
        "subscriptionId": "89e8cb59-0000-4000-8000-000000000000",
        "encoding": "PCM",
        "sampleRate": rate,
        "channels": 1,
        "length": length if length is not None else rate // 50 * 2,
    }
    body.update(extra)
    return json.dumps({"kind": "AudioMetadata", "audioMetadata": body})


def audio(pcm: bytes, **extra: Any) -> str:
    body: dict[str, Any] = {
        "timestamp": "2024-11-15T19:16:12.925Z",
        "data": base64.b64encode(pcm).decode(),
        "silent": False,
    }
    body.update(extra)
    return json.dumps({"kind": "AudioData", "audioData": body})


def test_metadata_is_parsed_with_its_format() -> None:
    msg = parse_inbound(metadata(24000))
    assert isinstance(msg, AudioMetadata)
    assert msg.sample_rate == 24000
    assert msg.length == 960
    assert msg.format.frame_bytes == 960
    assert msg.subscription_id == "89e8cb59-0000-4000-8000-000000000000"


def test_metadata_length_in_milliseconds_is_tolerated() -> None:
    msg = parse_inbound(metadata(16000, length=20))
    assert isinstance(msg, AudioMetadata)
    assert msg.length == 640


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (metadata(8000), "expected sampleRate 16000 or 24000, got 8000"),
        (metadata(16000, length=320), "expected length 640"),
        (metadata(16000, channels=2), "expected channels 1 (mono), got 2"),
        (metadata(16000, encoding="OPUS"), "expected encoding 'PCM', got 'OPUS'"),
    ],
)
def test_unsupported_formats_are_rejected_precisely(text: str, expected: str) -> None:
    with pytest.raises(InvalidFormat, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_inbound(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"KIND":"AUDIODATA","AUDIODATA":{"DATA":"AAAA","SILENT":true}}',
        '{"Kind":"AudioData","AudioData":{"Data":"AAAA","Silent":true}}',
        '{"kind":"audioData","audioData":{"data":"AAAA","silent":true}}',
    ],
)
def test_any_key_casing_is_accepted(text: str) -> None:
    msg = parse_inbound(text)
    assert msg == AudioData(
        pcm=b"\x00\x00\x00", timestamp=None, participant_raw_id=None, silent=True
    )


def test_audio_data_keeps_tags() -> None:
    msg = parse_inbound(audio(b"\x01\x02", participantRawID="4:+14255550123", silent=True))
    assert msg == AudioData(
        pcm=b"\x01\x02",
        timestamp="2024-11-15T19:16:12.925Z",
        participant_raw_id="4:+14255550123",
        silent=True,
    )


def test_dtmf_is_parsed() -> None:
    msg = parse_inbound('{"kind":"DtmfData","dtmfData":{"data":"#","participantRawID":"4:+1"}}')
    assert msg == DtmfData(tone="#", timestamp=None, participant_raw_id="4:+1")


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("not json", MalformedMessage, "invalid JSON"),
        ("[1, 2]", MalformedMessage, "expected a JSON object, got list"),
        ('{"data": 1}', MalformedMessage, "expected a string 'kind', got nothing"),
        ('{"kind":"AudioData"}', MalformedMessage, "expected an object in 'audiodata'"),
        ('{"kind":"AudioData","audioData":{"data":5}}', MalformedMessage, "base64 string"),
        ('{"kind":"AudioData","audioData":{"data":"@@@@"}}', InvalidFrame, "not valid base64"),
        ('{"kind":"AudioData","audioData":{"data":"AAA"}}', InvalidFrame, "not valid base64"),
        ('{"kind":"AudioData","audioData":{"data":"","silent":"no"}}', MalformedMessage, "boolean"),
        ('{"kind":"DtmfData","dtmfData":{"data":"12"}}', MalformedMessage, "one of 0-9"),
        ('{"kind":"Hello","hello":{}}', UnknownKind, "got 'Hello'"),
    ],
)
def test_bad_messages_raise_typed_errors(
    text: str, error: type[ProtocolError], message: str
) -> None:
    with pytest.raises(error, match=message):
        parse_inbound(text)


def test_error_policy_is_carried_by_the_error() -> None:
    assert MalformedMessage("x").close_code == CLOSE_INVALID_PAYLOAD
    assert MalformedMessage("x").fatal
    assert not UnknownKind("x", "y").fatal
    assert UnknownKind("x", "y").close_code == CLOSE_UNSUPPORTED_DATA
    assert not InvalidFrame("x").fatal
    assert OutOfOrder("x").close_code == CLOSE_POLICY_VIOLATION


def test_close_reason_fits_a_control_frame() -> None:
    error = MalformedMessage("é" * 200)
    assert len(error.reason.encode()) <= 123
    assert error.reason.endswith("...")


def test_session_requires_metadata_first() -> None:
    session = InboundSession()
    with pytest.raises(
        OutOfOrder, match="expected AudioMetadata as the first message, got AudioData"
    ):
        session.receive(audio(bytes(640)))
    with pytest.raises(OutOfOrder, match="got DtmfData"):
        session.receive('{"kind":"DtmfData","dtmfData":{"data":"1"}}')


def test_session_checks_frame_length_against_metadata() -> None:
    session = InboundSession()
    session.receive(metadata(24000))
    assert isinstance(session.receive(audio(bytes(960))), AudioData)
    with pytest.raises(InvalidFrame, match=r"expected 960 bytes of PCM .* got 640"):
        session.receive(audio(bytes(640)))


def test_session_accepts_repeated_metadata_but_not_a_format_change() -> None:
    session = InboundSession()
    session.receive(metadata(16000))
    session.receive(metadata(16000))
    with pytest.raises(OutOfOrder, match="already set to 16000 Hz"):
        session.receive(metadata(24000))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"Kind":"AudioData","AudioData":{"Data":"AQI="},"StopAudio":null}',
            OutboundAudio(b"\x01\x02"),
        ),
        ('{"kind":"AudioData","audioData":{"data":"AQI="}}', OutboundAudio(b"\x01\x02")),
        (
            '{"kind":"audioData","audioData":{"data":"AQI=","isSilent":false},"stopAudio":{}}',
            OutboundAudio(b"\x01\x02"),
        ),
        ('{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}', StopAudio()),
        ('{"kind":"stopAudio","stopAudio":{}}', StopAudio()),
    ],
)
def test_every_outbound_spelling_is_understood(text: str, expected: object) -> None:
    assert parse_outbound(text) == expected


@given(st.binary(max_size=4000))
def test_outbound_audio_round_trips(pcm: bytes) -> None:
    assert parse_outbound(build_audio_data(pcm)) == OutboundAudio(pcm)


def test_outbound_stop_round_trips() -> None:
    assert parse_outbound(build_stop_audio()) == StopAudio()


@given(
    st.binary(min_size=0, max_size=2000),
    st.one_of(st.none(), st.text(max_size=40)),
    st.booleans(),
)
def test_inbound_audio_round_trips(pcm: bytes, participant: str | None, silent: bool) -> None:
    text = audio(pcm, participantRawID=participant, silent=silent)
    msg = parse_inbound(text)
    assert isinstance(msg, AudioData)
    assert msg.pcm == pcm
    assert msg.participant_raw_id == (participant or None)
    assert msg.silent is silent


@given(st.sampled_from([16000, 24000]), st.binary(max_size=1200))
def test_session_accepts_exactly_the_announced_frame_size(rate: int, pcm: bytes) -> None:
    session = InboundSession()
    session.receive(metadata(rate))
    if len(pcm) == rate // 50 * 2:
        assert isinstance(session.receive(audio(pcm)), AudioData)
    else:
        with pytest.raises(InvalidFrame):
            session.receive(audio(pcm))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    for parse in (parse_inbound, parse_outbound):
        with contextlib.suppress(ProtocolError):
            parse(data)


@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_codec_errors(text: str) -> None:
    session = InboundSession()
    for parse in (parse_inbound, parse_outbound, session.receive):
        with contextlib.suppress(ProtocolError):
            parse(text)


@given(
    st.sampled_from(["AudioMetadata", "AudioData", "DtmfData", "StopAudio", "audioData", "x"]),
    st.dictionaries(
        st.sampled_from(
            [
                "data",
                "Data",
                "sampleRate",
                "encoding",
                "channels",
                "length",
                "silent",
                "timestamp",
                "participantRawID",
                "subscriptionId",
            ]
        ),
        json_values,
        max_size=6,
    ),
)
def test_structured_garbage_raises_only_codec_errors(kind: str, body: dict[str, Any]) -> None:
    key = kind[0].lower() + kind[1:]
    text = json.dumps({"kind": kind, key: body})
    session = InboundSession()
    for parse in (parse_inbound, parse_outbound, session.receive):
        with contextlib.suppress(ProtocolError):
            parse(text)
