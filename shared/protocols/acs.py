"""Azure Communication Services audio-streaming codec (sans-I/O).

Text in, typed messages out, and back. Nothing here touches a socket.

* :func:`parse_inbound` parses one inbound message (``AudioMetadata``, ``AudioData``,
  ``DtmfData``) with any key casing and validates it on its own.
* :class:`InboundSession` is the per-connection state machine: metadata first, then frames whose
  length must match the announced format.
* :func:`build_audio_data` / :func:`build_stop_audio` make the outbound messages, and
  :func:`parse_outbound` reads every outbound spelling seen in the wild (for the emulator).

See ``docs/protocol.md`` for how each error is answered on the wire.

Speed: orjson parses the JSON and pybase64 (SIMD) decodes and encodes the base64; an inbound
AudioData costs about half of what it did with the stdlib, an outbound one a third
(``python -m bench codec``, ``docs/performance.md``). They only ever decide what they accept:
whatever they refuse, and every :class:`MalformedMessage`, is decided again by the stdlib's
``json`` and strict ``binascii``, so every bad input gets the answer, and the message, it got
with the stdlib alone. Two deliberate differences: a lone surrogate (``"\\ud800"``) anywhere in a
message is :class:`MalformedMessage`, as orjson says (no UTF-8 can carry it, so nothing
downstream could publish it); and nesting is parsed to orjson's 1024 levels, where json's limit
depended on the caller's stack (a little under 1000 levels).
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import orjson
import pybase64

from callstream.shared.audio import SUPPORTED_RATES_HZ, AudioFormat, frame_bytes_for
from callstream.shared.errors import (
    InvalidFormat,
    InvalidFrame,
    MalformedMessage,
    OutOfOrder,
    UnknownKind,
)

__all__ = [
    "AudioData",
    "AudioMetadata",
    "DtmfData",
    "InboundMessage",
    "InboundSession",
    "OutboundAudio",
    "OutboundMessage",
    "StopAudio",
    "build_audio_data",
    "build_stop_audio",
    "parse_inbound",
    "parse_outbound",
]

MAX_STRING_CHARS = 256  # any string field of an inbound message (ids, timestamps)

_DTMF_TONES = frozenset("0123456789*#ABCDabcd")

# The fast paths. ``bench/codec.py`` swaps them for the stdlib's to measure the difference;
# nothing else should touch them.
_loads: Callable[[str | bytes | bytearray], Any] = orjson.loads
_b64decode: Callable[[str], bytes] = partial(pybase64.b64decode, validate=True)
_b64encode: Callable[[bytes], str] = pybase64.b64encode_as_string

_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")  # json.loads joins escaped pairs into one

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class AudioMetadata:
    """First message of a stream: the audio format of every following frame."""

    subscription_id: str | None
    encoding: str
    sample_rate: int
    channels: int
    length: int

    @property
    def format(self) -> AudioFormat:
        return AudioFormat(self.sample_rate)


@dataclass(frozen=True, slots=True)
class AudioData:
    """One 20 ms frame: decoded PCM plus ACS's tags."""

    pcm: bytes
    timestamp: str | None
    participant_raw_id: str | None
    silent: bool


@dataclass(frozen=True, slots=True)
class DtmfData:
    """One DTMF tone."""

    tone: str
    timestamp: str | None
    participant_raw_id: str | None


InboundMessage = AudioMetadata | AudioData | DtmfData


@dataclass(frozen=True, slots=True)
class OutboundAudio:
    """Audio the server asks the call platform to play (decoded PCM)."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class StopAudio:
    """Drop whatever audio is queued for playback (barge-in)."""


OutboundMessage = OutboundAudio | StopAudio


# --------------------------------------------------------------------------- helpers


def _lower_keys(obj: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in obj.items()}


def _as_object(obj: object) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedMessage(f"expected a JSON object, got {type(obj).__name__}")
    return _lower_keys(obj)


def _load_object_stdlib(text: str | bytes | bytearray) -> dict[str, Any]:
    """The stdlib's verdict on ``text``, with its message, for everything orjson refused.

    That is invalid JSON, and valid JSON orjson does not take: ``NaN``/``Infinity``, nesting
    deeper than 1024, bytes in UTF-16/32 or with a BOM, and lone surrogates.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedMessage(f"expected a JSON object, got invalid JSON: {exc}") from None
    if _has_lone_surrogate(obj):
        raise MalformedMessage(
            "expected a JSON object, got invalid JSON: a string holds a lone surrogate"
        )
    return _as_object(obj)


def _has_lone_surrogate(obj: object) -> bool:
    pending = [obj]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _decode(text: str | bytes | bytearray, parse: Callable[[dict[str, Any]], _T]) -> _T:
    """``parse`` the JSON object in ``text``: orjson first, the stdlib for every doubt."""
    if type(text) is not str and not isinstance(text, (str, bytes, bytearray)):
        # As json.loads (orjson would also take a memoryview).
        raise TypeError(
            f"the JSON object must be str, bytes or bytearray, not {type(text).__name__}"
        )
    try:
        obj = _loads(text)
    except (ValueError, RecursionError):  # orjson.JSONDecodeError
        return parse(_load_object_stdlib(text))
    try:
        return parse(_as_object(obj))
    except MalformedMessage:
        # orjson reads integers beyond 64 bits as floats, which changes what the message says
        # ("got float", not "got int"): the stdlib's object gives the answer and message as
        # before. The other errors are raised on strings and small integers, which orjson and
        # json read alike.
        return parse(_load_object_stdlib(text))


def _body(msg: dict[str, Any], name: str, kind: str) -> dict[str, Any]:
    body = msg.get(name)
    if not isinstance(body, dict):
        raise MalformedMessage(f"{kind}: expected an object in '{name}', got {_type_name(body)}")
    return _lower_keys(body)


def _type_name(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _wrong_type(kind: str, name: str, expected: str, value: object) -> MalformedMessage:
    return MalformedMessage(f"{kind}: expected '{name}' to be {expected}, got {_type_name(value)}")


def _opt_str(body: dict[str, Any], name: str, kind: str) -> str | None:
    value = body.get(name)
    if value is None:
        return value
    if not isinstance(value, str):
        raise _wrong_type(kind, name, "a string", value)
    if len(value) > MAX_STRING_CHARS:
        # A participantRawID is ~50 characters, a timestamp ~30: a long one would be copied
        # into every frame's stream entry (a 60 000-character id put 200 MB into Redis).
        raise MalformedMessage(
            f"{kind}: expected '{name}' to be at most {MAX_STRING_CHARS} characters, "
            f"got {len(value)}"
        )
    return value


def _int(body: dict[str, Any], name: str, kind: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(kind, name, "an integer", value)
    return value


def _decode_base64(data: object, kind: str) -> bytes:
    if not isinstance(data, str):
        raise _wrong_type(kind, "data", "a base64 string", data)
    try:
        return _b64decode(data)
    except ValueError:  # binascii.Error; pybase64 refuses some padding the stdlib takes: "AAAA="
        pass
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except ValueError as exc:  # binascii.Error, and non-ASCII text
        raise InvalidFrame(f"{kind}: 'data' is not valid base64: {exc}") from None


def _kind(msg: dict[str, Any]) -> str:
    kind = msg.get("kind")
    if not isinstance(kind, str):
        raise MalformedMessage(f"expected a string 'kind', got {_type_name(kind)}")
    return kind


# --------------------------------------------------------------------------- inbound


def _parse_metadata(msg: dict[str, Any]) -> AudioMetadata:
    kind = "AudioMetadata"
    body = _body(msg, "audiometadata", kind)
    encoding = body.get("encoding")
    if not isinstance(encoding, str):
        raise _wrong_type(kind, "encoding", "a string", encoding)
    if encoding.upper() != "PCM":
        raise InvalidFormat(f"{kind}: expected encoding 'PCM', got {encoding!r}")
    rate = _int(body, "samplerate", kind)
    if rate not in SUPPORTED_RATES_HZ:
        raise InvalidFormat(f"{kind}: expected sampleRate 16000 or 24000, got {rate}")
    channels = _int(body, "channels", kind)
    if channels != 1:
        raise InvalidFormat(f"{kind}: expected channels 1 (mono), got {channels}")
    expected = frame_bytes_for(rate)
    length = body.get("length", expected)
    if isinstance(length, bool) or not isinstance(length, int):
        raise _wrong_type(kind, "length", "an integer", length)
    # Every example gives bytes per 20 ms frame; one SDK documents milliseconds (20).
    if length not in (expected, 20):
        raise InvalidFormat(
            f"{kind}: expected length {expected} (bytes per 20 ms frame at {rate} Hz), got {length}"
        )
    return AudioMetadata(
        subscription_id=_opt_str(body, "subscriptionid", kind),
        encoding="PCM",
        sample_rate=rate,
        channels=1,
        length=expected,
    )


def _parse_audio(msg: dict[str, Any]) -> AudioData:
    kind = "AudioData"
    body = _body(msg, "audiodata", kind)
    pcm = _decode_base64(body.get("data"), kind)
    silent = body.get("silent", False)
    if silent is None:
        silent = False
    if not isinstance(silent, bool):
        raise _wrong_type(kind, "silent", "a boolean", silent)
    return AudioData(
        pcm=pcm,
        timestamp=_opt_str(body, "timestamp", kind),
        participant_raw_id=_opt_str(body, "participantrawid", kind) or None,
        silent=silent,
    )


def _parse_dtmf(msg: dict[str, Any]) -> DtmfData:
    kind = "DtmfData"
    body = _body(msg, "dtmfdata", kind)
    tone = body.get("data")
    if not isinstance(tone, str) or len(tone) != 1 or tone not in _DTMF_TONES:
        raise MalformedMessage(f"{kind}: expected 'data' to be one of 0-9 * # A-D, got {tone!r}")
    return DtmfData(
        tone=tone.upper(),
        timestamp=_opt_str(body, "timestamp", kind),
        participant_raw_id=_opt_str(body, "participantrawid", kind) or None,
    )


_INBOUND: dict[str, Callable[[dict[str, Any]], InboundMessage]] = {
    "audiometadata": _parse_metadata,
    "audiodata": _parse_audio,
    "dtmfdata": _parse_dtmf,
}


def parse_inbound(text: str | bytes | bytearray) -> InboundMessage:
    """Parse one inbound ACS message.

    Raises a :class:`~shared.errors.ProtocolError` subclass describing what was expected and
    what arrived; nothing else escapes, whatever the text (a ``TypeError`` for an argument that
    is not ``str``, ``bytes`` or ``bytearray``, as ``json.loads``).
    """
    return _decode(text, _parse_inbound_object)


def _parse_inbound_object(msg: dict[str, Any]) -> InboundMessage:
    kind = _kind(msg)
    parser = _INBOUND.get(kind.lower())
    if parser is None:
        raise UnknownKind(
            f"expected kind AudioMetadata, AudioData or DtmfData, got {kind[:40]!r}", kind[:40]
        )
    return parser(msg)


class InboundSession:
    """Per-connection protocol state: ``AudioMetadata`` first, then frames of the right size.

    A repeated ``AudioMetadata`` with the same format is accepted (and returned); one that changes
    the format is an :class:`~shared.errors.OutOfOrder` error.
    """

    __slots__ = ("metadata",)

    def __init__(self) -> None:
        self.metadata: AudioMetadata | None = None

    @property
    def format(self) -> AudioFormat | None:
        return self.metadata.format if self.metadata else None

    def receive(self, text: str | bytes | bytearray) -> InboundMessage:
        message = parse_inbound(text)
        if isinstance(message, AudioMetadata):
            if self.metadata is not None and message.sample_rate != self.metadata.sample_rate:
                raise OutOfOrder(
                    f"AudioMetadata: format already set to {self.metadata.sample_rate} Hz, "
                    f"got a second one with {message.sample_rate} Hz"
                )
            self.metadata = message
            return message
        if self.metadata is None:
            name = "AudioData" if isinstance(message, AudioData) else "DtmfData"
            raise OutOfOrder(f"expected AudioMetadata as the first message, got {name}")
        if isinstance(message, AudioData) and len(message.pcm) != self.metadata.length:
            raise InvalidFrame(
                f"AudioData: expected {self.metadata.length} bytes of PCM "
                f"(20 ms at {self.metadata.sample_rate} Hz), got {len(message.pcm)}"
            )
        return message


# --------------------------------------------------------------------------- outbound


def build_audio_data(pcm: bytes) -> str:
    """Outbound ``AudioData`` carrying ``pcm`` (camelCase, as Microsoft's samples send it)."""
    data = _b64encode(pcm)
    return '{"kind":"AudioData","audioData":{"data":"' + data + '"}}'


def build_stop_audio() -> str:
    """Outbound ``StopAudio``: the call platform drops what it has queued."""
    return '{"kind":"StopAudio","stopAudio":{}}'


def parse_outbound(text: str | bytes | bytearray) -> OutboundMessage:
    """Parse an outbound message in any spelling seen in working code.

    Accepts ``{"Kind":"AudioData","AudioData":{"Data":…},"StopAudio":null}``, camelCase
    ``{"kind":"AudioData","audioData":{"data":…}}``, the JS SDK helpers'
    ``{"kind":"audioData",…}`` and ``{"kind":"stopAudio","stopAudio":{}}``.
    """
    return _decode(text, _parse_outbound_object)


def _parse_outbound_object(msg: dict[str, Any]) -> OutboundMessage:
    kind = _kind(msg)
    lowered = kind.lower()
    if lowered == "audiodata":
        body = _body(msg, "audiodata", kind)
        pcm = _decode_base64(body.get("data"), kind)
        return OutboundAudio(pcm=pcm)
    if lowered == "stopaudio":
        return StopAudio()
    raise UnknownKind(f"expected kind AudioData or StopAudio, got {kind[:40]!r}", kind[:40])
