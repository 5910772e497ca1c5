"""ACS codec: parsing, validation and round trips (pure, no I/O)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import orjson
import pybase64
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from bench import bare_server
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
from callstream.shared.protocols import acs
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


# --------------------------------------------------------------------------- orjson and pybase64
#
# The codec parses with orjson and decodes base64 with pybase64; whatever they refuse, and every
# MalformedMessage, is decided again by the stdlib. These tests pin the answer to each input on
# which the libraries differ and compare the codec with the stdlib-only codec it replaced.


@contextlib.contextmanager
def stdlib_codec() -> Iterator[None]:
    """The codec as it was before orjson and pybase64: json and strict binascii only."""
    saved = acs._loads, acs._b64decode, acs._b64encode
    acs._loads = json.loads
    acs._b64decode = partial(binascii.a2b_base64, strict_mode=True)
    acs._b64encode = lambda pcm: base64.b64encode(pcm).decode("ascii")
    try:
        yield
    finally:
        acs._loads, acs._b64decode, acs._b64encode = saved


def outcome(parse: Callable[[Any], object], text: object) -> object:
    """What ``parse`` returns, or the type and message of the error it raises."""
    try:
        return parse(text)
    except (ProtocolError, TypeError) as exc:
        return type(exc), str(exc)


def stdlib_outcome(parse: Callable[[Any], object], text: object) -> object:
    with stdlib_codec():
        return outcome(parse, text)


def session_with_metadata(rate: int = 16000) -> InboundSession:
    session = InboundSession()
    session.receive(metadata(rate))
    return session


def test_the_codec_runs_on_orjson_and_pybase64() -> None:
    # What the tests below compare against the stdlib is what the gateway runs.
    assert acs._loads is orjson.loads
    assert acs._b64decode("AQI=") == b"\x01\x02"
    assert acs._b64encode(b"\x01\x02") == "AQI="
    assert "C extension active" in pybase64.get_version()


def test_nan_and_infinity_are_read_as_json_reads_them() -> None:
    # orjson refuses these literals; json reads them as floats, and so does the codec.
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads("NaN")
    assert parse_inbound('{"kind":"AudioData","audioData":{"data":"AQI=","gain":NaN}}') == (
        AudioData(pcm=b"\x01\x02", timestamp=None, participant_raw_id=None, silent=False)
    )
    with pytest.raises(MalformedMessage, match="expected 'samplerate' to be an integer, got float"):
        parse_inbound(metadata(16000).replace("16000", "Infinity"))
    with pytest.raises(MalformedMessage, match="expected 'silent' to be a boolean, got float"):
        parse_inbound('{"kind":"AudioData","audioData":{"data":"","silent":-Infinity}}')


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        (
            metadata(16000).replace("16000", str(2**64)),
            InvalidFormat,
            f"expected sampleRate 16000 or 24000, got {2**64}",
        ),
        (
            metadata(16000, channels=-(2**63) - 1),
            InvalidFormat,
            rf"expected channels 1 \(mono\), got {-(2**63) - 1}",
        ),
        (
            f'{{"kind":"AudioData","audioData":{{"data":"","silent":{2**64}}}}}',
            MalformedMessage,
            "expected 'silent' to be a boolean, got int",
        ),
        (
            f'{{"kind":"DtmfData","dtmfData":{{"data":{2**70}}}}}',
            MalformedMessage,
            f"got {2**70}$",
        ),
        (f'{{"kind":{2**64}}}', MalformedMessage, "expected a string 'kind', got int"),
    ],
)
def test_integers_beyond_64_bits_get_the_answer_json_gives(
    text: str, error: type[ProtocolError], message: str
) -> None:
    # orjson reads them as floats ("got float"); the codec answers as json: they are integers.
    assert isinstance(orjson.loads(str(2**64)), float)
    with pytest.raises(error, match=message):
        parse_inbound(text)
    assert outcome(parse_inbound, text) == stdlib_outcome(parse_inbound, text)


def test_integers_beyond_64_bits_in_other_fields_are_ignored() -> None:
    text = f'{{"kind":"AudioData","audioData":{{"data":"AQI=","sequence":{2**80}}}}}'
    assert isinstance(parse_inbound(text), AudioData)


LONE_SURROGATES = [
    audio(b"\x01\x02", participantRawID="8:acs:\ud800"),  # json.dumps writes "\ud800"
    audio(b"\x01\x02", timestamp="\udc00"),
    audio(b"\x01\x02", comment="\udfff"),  # a field the codec does not read
    audio(b"\x01\x02", **{"\ud800": 1}),  # a key
    '{"kind":"AudioData\\ud800","audioData":{"data":"AQI="}}',
    '{"kind":"AudioData","audioData":{"data":"AQI=\\ud800"}}',
    '{"kind":"DtmfData","dtmfData":{"data":"1","participantRawID":"\\ud800\\u0041"}}',
    '{"kind":"AudioData","audioData":{"data":"AQI=","participantRawID":"\ud800"}}',  # not escaped
]


@pytest.mark.parametrize("text", LONE_SURROGATES)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_lone_surrogate_anywhere_is_a_malformed_message(text: str, as_bytes: bool) -> None:
    # No UTF-8 can carry it (nothing downstream could publish it): orjson refuses it, json
    # would read it, the codec refuses it. In bytes it is either escaped or CESU-8 (which
    # json.loads reads with "surrogatepass").
    message: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    for parse in (parse_inbound, parse_outbound, session_with_metadata().receive):
        with pytest.raises(MalformedMessage, match="a string holds a lone surrogate"):
            parse(message)


def test_a_surrogate_pair_is_one_character() -> None:
    for text in (
        audio(b"\x01\x02", participantRawID="4:+1\U0001f600"),
        audio(b"\x01\x02", participantRawID="4:+1\U0001f600").replace("\\ud83d", "\\uD83D"),
    ):
        msg = parse_inbound(text)
        assert isinstance(msg, AudioData)
        assert msg.participant_raw_id == "4:+1\U0001f600"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"kind":"Hello","kind":"DtmfData","dtmfData":{"data":"1"}}',
            DtmfData(tone="1", timestamp=None, participant_raw_id=None),
        ),
        (
            '{"kind":"DtmfData","dtmfData":{"data":"1"},"DtmfData":{"data":"2"}}',
            DtmfData(tone="2", timestamp=None, participant_raw_id=None),
        ),
        (
            '{"kind":"DtmfData","KIND":"Hello","dtmfData":{"data":"1"},"kind":"DtmfData"}',
            (UnknownKind, "expected kind AudioMetadata, AudioData or DtmfData, got 'Hello'"),
        ),
    ],
)
def test_duplicate_keys_the_last_one_wins_whatever_its_casing(text: str, expected: object) -> None:
    # json and orjson both keep the last value at the first key's place; keys are then lowered
    # in that order.
    assert outcome(parse_inbound, text) == expected
    assert stdlib_outcome(parse_inbound, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        audio(b"\x01\x02").encode(),
        bytearray(audio(b"\x01\x02").encode()),
        b"\xef\xbb\xbf" + audio(b"\x01\x02").encode(),  # json.loads reads bytes as utf-8-sig
        audio(b"\x01\x02").encode("utf-16"),  # ... or UTF-16/32, found by its zero bytes
        audio(b"\x01\x02").encode("utf-32-le"),
    ],
)
def test_bytes_are_read_as_json_reads_them(text: bytes | bytearray) -> None:
    assert parse_inbound(text) == parse_inbound(audio(b"\x01\x02"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\ufeff" + audio(b"\x01\x02"), "Unexpected UTF-8 BOM"),  # a str with a BOM
        (b'{"kind":"AudioData","audioData":{"data":"\xff"}}', "invalid start byte"),
        (b"", "Expecting value"),
    ],
)
def test_undecodable_text_is_malformed_with_jsons_message(text: str | bytes, message: str) -> None:
    with pytest.raises(MalformedMessage, match=f"got invalid JSON: .*{message}"):
        parse_inbound(text)
    assert outcome(parse_inbound, text) == stdlib_outcome(parse_inbound, text)


@pytest.mark.parametrize("text", [memoryview(b"{}"), 1, None, ["{}"]])
def test_anything_but_str_bytes_or_bytearray_is_a_type_error(text: object) -> None:
    # As json.loads; orjson alone would take a memoryview.
    expected = f"the JSON object must be str, bytes or bytearray, not {type(text).__name__}"
    for parse in (parse_inbound, parse_outbound):
        with pytest.raises(TypeError, match=expected):
            parse(text)  # type: ignore[arg-type]


def test_subclasses_of_str_and_bytes_are_text() -> None:
    class Text(str):
        pass

    class Data(bytes):
        pass

    expected = parse_inbound(audio(b"\x01\x02"))
    assert parse_inbound(Text(audio(b"\x01\x02"))) == expected
    assert parse_inbound(Data(audio(b"\x01\x02").encode())) == expected


def test_nesting_is_parsed_to_1024_levels_and_malformed_beyond() -> None:
    # orjson's limit; json's depended on the caller's stack (a little under 1000 levels).
    def nested(depth: int) -> str:
        return '{"kind":"Hello","x":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"

    with pytest.raises(UnknownKind):
        parse_inbound(nested(1024))
    with pytest.raises(MalformedMessage, match="invalid JSON"):
        parse_inbound(nested(1025))
    with pytest.raises(MalformedMessage, match="invalid JSON"):
        parse_inbound(nested(100_000))


# Data strings on which pybase64 and the stdlib's strict decoder could part: padding, whitespace,
# other alphabets, non-ASCII. The codec answers as the stdlib, message included.
BASE64_EDGES = [
    "",
    "AQI=",
    "AQ==",
    "AB==",  # non-zero bits after the last byte: accepted by both
    "AAAA=",  # pybase64 refuses the excess padding, the stdlib takes it
    "AAAA==",
    "AAAA===",
    "AQI",
    "AQ=",
    "A===",
    "=AAA",
    "AA=A",
    "AA==AA==",
    "AQI=AQI=",
    "AA AA",
    " AAAA",
    "AAAA\n",
    "AA\r\nAA",
    "AA\tAA",
    "AA-_",  # the URL-safe alphabet
    "AA.A",
    "AAA\u00e9",
    "AAA\x00",
    "\uff21AAA",  # fullwidth A
    "A" * 853 + "=",  # a frame's length, one character short
    "A" * 852 + "\n" + "A" * 4,
    "A" * 852 + "==" + "A" * 4,
]


def stdlib_decode(data: str) -> bytes | str:
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except ValueError as exc:
        return f"AudioData: 'data' is not valid base64: {exc}"


@pytest.mark.parametrize("data", BASE64_EDGES)
def test_base64_gets_the_strict_stdlib_answer_and_message(data: str) -> None:
    expected = stdlib_decode(data)
    text = json.dumps({"kind": "AudioData", "audioData": {"data": data}})
    if isinstance(expected, bytes):
        msg = parse_inbound(text)
        assert isinstance(msg, AudioData)
        assert msg.pcm == expected
    else:
        with pytest.raises(InvalidFrame) as raised:
            parse_inbound(text)
        assert str(raised.value) == expected


def test_pybase64_refusals_are_decided_by_the_stdlib() -> None:
    # The case the fallback is for: pybase64 refuses excess padding that the stdlib accepts.
    with pytest.raises(binascii.Error):
        pybase64.b64decode("AAAA=", validate=True)
    assert parse_outbound('{"kind":"AudioData","audioData":{"data":"AAAA="}}') == OutboundAudio(
        b"\x00\x00\x00"
    )


BASE64_CHARS = "ABCDQZagz019+/="
base64_like = st.one_of(
    st.text(st.sampled_from(BASE64_CHARS), max_size=40),
    st.binary(max_size=1000).map(lambda b: base64.b64encode(b).decode()),
    st.tuples(
        st.binary(max_size=1000).map(lambda b: base64.b64encode(b).decode()),
        st.integers(min_value=0),
        st.text(
            st.sampled_from([*BASE64_CHARS, " ", "\n", "\r", "-", "_", "\u00e9", "\x00", "\x80"]),
            min_size=1,
            max_size=3,
        ),
        st.integers(min_value=0, max_value=2),
    ).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1) + t[3] :]),
)


@given(base64_like)
def test_base64_decodes_as_the_strict_stdlib_decoder(data: str) -> None:
    expected = stdlib_decode(data)
    text = json.dumps({"kind": "AudioData", "audioData": {"data": data}})
    got = outcome(parse_inbound, text)
    if isinstance(expected, bytes):
        assert isinstance(got, AudioData)
        assert got.pcm == expected
    else:
        assert got == (InvalidFrame, expected)


@given(st.binary(max_size=4000))
def test_outbound_audio_is_the_same_text_as_with_the_stdlib(pcm: bytes) -> None:
    expected = '{"kind":"AudioData","audioData":{"data":"' + base64.b64encode(pcm).decode() + '"}}'
    assert build_audio_data(pcm) == expected


# Messages close to what ACS sends, with the values json reads differently from orjson: NaN and
# infinities, integers beyond 64 bits, lone surrogates, key casings, and then spliced with tokens
# (duplicate keys, stray characters) to make invalid JSON too.
SPLICES = [
    ",",
    ":",
    "{",
    "}",
    "[",
    "]",
    '"',
    "\\",
    " ",
    "\n",
    "\t",
    "\x0c",
    "\x00",
    "\u00a0",
    "\ufeff",
    "\ud800",
    "NaN",
    "-Infinity",
    "1e400",
    "-0",
    "01",
    "1.",
    str(2**64),
    '"\\ud800"',
    '"\\udc00\\ud800"',
    '"\\ud83d\\ude00"',
    '"\\u00e9"',
    '"kind":"DtmfData",',
    '"Kind":"AudioData",',
    '"audioData":{"data":"AQI="},',
    "null",
    "true",
]
surrogate_text = st.text(st.characters(categories=["Cs", "Ll", "Nd"]), max_size=6)
wide_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**80)  # past orjson's 64 bits, every time
    | st.integers(min_value=-(2**80), max_value=-(2**63) - 1)
    | st.floats()
    | surrogate_text
    | st.text(max_size=10)
    | st.sampled_from(["AQI=", "PCM", "AudioData", "1", "#"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=8) | surrogate_text, children, max_size=3)
    ),
    max_leaves=10,
)
KEYS = [
    "data",
    "DATA",
    "sampleRate",
    "samplerate",
    "encoding",
    "channels",
    "length",
    "silent",
    "timestamp",
    "participantRawID",
    "subscriptionId",
]
acs_like = st.builds(
    lambda kind, body, extra, ascii_only: json.dumps(
        {"kind": kind, kind[0].lower() + kind[1:]: body, **extra}, ensure_ascii=ascii_only
    ),
    st.sampled_from(["AudioMetadata", "AudioData", "DtmfData", "StopAudio", "audioData"]),
    st.dictionaries(st.sampled_from(KEYS), wide_values, max_size=6),
    st.dictionaries(st.sampled_from(["Kind", "KIND", "AudioData", "x"]), wide_values, max_size=2),
    st.booleans(),
)
spliced = st.builds(
    lambda text, at, token: text[: at % (len(text) + 1)] + token + text[at % (len(text) + 1) :],
    acs_like,
    st.integers(min_value=0),
    st.sampled_from(SPLICES),
)
messages = st.one_of(acs_like, spliced, spliced.map(lambda t: t.encode("utf-8", "surrogatepass")))


def has_lone_surrogate(text: str | bytes) -> bool:
    """Whether json reads a lone surrogate in ``text`` (in a key or a string)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return False
    try:
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def normalised(value: object) -> object:
    """What orjson makes of what json read: integers beyond 64 bits are floats."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    return value


@given(messages)
def test_what_orjson_accepts_json_reads_alike(text: str | bytes) -> None:
    # What the codec rests on: orjson reads nothing json refuses, and reads what it accepts as
    # json does but for integers beyond 64 bits (floats). NaN never comes out of orjson.
    try:
        fast = orjson.loads(text)
    except orjson.JSONDecodeError:
        return
    slow = json.loads(text)
    assert normalised(slow) == fast
    assert repr(normalised(slow)) == repr(fast)  # -0.0 and 0.0, 1 and 1.0 differ here


@given(messages)
def test_every_message_gets_the_answer_of_the_stdlib_codec(text: str | bytes) -> None:
    lone_surrogate = has_lone_surrogate(text)
    for parse in (parse_inbound, parse_outbound, session_with_metadata(24000).receive):
        if lone_surrogate:  # the one deliberate difference
            assert outcome(parse, text) == (
                MalformedMessage,
                "expected a JSON object, got invalid JSON: a string holds a lone surrogate",
            )
        else:
            assert outcome(parse, text) == stdlib_outcome(parse, text)


def test_the_messages_generated_hold_what_the_libraries_read_differently() -> None:
    # Not a vacuous comparison: the generators do make these (derandomized: the same search
    # every run).
    search = settings(max_examples=5_000, derandomize=True, database=None, phases=[Phase.generate])
    find(messages, has_lone_surrogate, settings=search)
    find(acs_like, lambda text: "NaN" in text or "Infinity" in text, settings=search)
    find(
        acs_like,
        lambda text: normalised(json.loads(text)) != json.loads(text),  # > 64 bits
        settings=search,
    )


# --------------------------------------------------------------------------- the bare server


BARE_SEQUENCE = [
    audio(bytes(640)),  # before the metadata
    '{"kind":"DtmfData","dtmfData":{"data":"1"}}',
    metadata(16000),
    audio(bytes(640)),
    audio(bytes(640), participantRawID="8:acs:x", timestamp=None, silent=None),
    audio(bytes(960)),
    '{"kind":"AudioData","audioData":{"data":"@@@@"}}',
    '{"kind":"AudioData","audioData":{"data":"AAAA="}}',
    audio(bytes(640), silent="no"),
    audio(bytes(640), participantRawID=5),
    '{"kind":"DtmfData","dtmfData":{"data":"#"}}',
    '{"kind":"DtmfData","dtmfData":{"data":"12"}}',
    '{"kind":"Hello"}',
    '{"Kind":"AUDIODATA","AudioData":{"Data":"' + base64.b64encode(bytes(640)).decode() + '"}}',
    "not json",
    "[1]",
    metadata(16000, length=20),
    metadata(24000),
    metadata(8000),
    metadata(16000, channels=2),
    metadata(16000, encoding="OPUS"),
]


@given(st.lists(st.sampled_from(BARE_SEQUENCE) | messages, max_size=12))
def test_the_bare_server_accepts_and_counts_what_the_stdlib_codec_does(
    texts: list[str | bytes],
) -> None:
    # bench/bare_server.py is the ingest benchmark's reference: plain stdlib, its own parse,
    # the same work as the codec before orjson.
    bare = bare_server.Session()
    with stdlib_codec():
        session = InboundSession()
        for text in texts:
            try:
                expected: object = session.receive(text)
            except ProtocolError:
                expected = "rejected"
            try:
                got: object = bare.receive(text)
            except bare_server.Rejected:
                got = "rejected"
            if isinstance(expected, AudioData):
                assert got == bare_server.Frame(
                    expected.pcm, expected.timestamp, expected.participant_raw_id, expected.silent
                )
            elif expected != "rejected":
                assert got is None
            else:
                assert got == "rejected"


def test_a_string_field_longer_than_the_limit_is_malformed() -> None:
    session = InboundSession()
    session.receive(
        '{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"s",'
        '"encoding":"PCM","sampleRate":16000,"channels":1,"length":640}}'
    )
    long_id = "x" * 257
    message = (
        '{"kind":"AudioData","audioData":{"data":"'
        + base64.b64encode(bytes(640)).decode()
        + '","participantRawID":"'
        + long_id
        + '"}}'
    )
    with pytest.raises(MalformedMessage, match="at most 256 characters, got 257"):
        session.receive(message)
