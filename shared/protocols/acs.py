"""Azure Communication Services audio-streaming codec (sans-I/O).

Text in, typed messages out, and back. Nothing here touches a socket.

* :func:`parse_inbound` parses one inbound message (``AudioMetadata``, ``AudioData``,
  ``DtmfData``) with any key casing and validates it on its own.
* :class:`InboundSession` is the per-connection state machine: metadata first, then frames whose
  length must match the announced format.
* :func:`build_audio_data` / :func:`build_stop_audio` make the outbound messages, and
  :func:`parse_outbound` reads every outbound spelling seen in the wild (for the emulator).

See ``docs/protocol.md`` for how each error is answered on the wire.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

_DTMF_TONES = frozenset("0123456789*#ABCDabcd")


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


def _load_object(text: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedMessage(f"expected a JSON object, got invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"expected a JSON object, got {type(obj).__name__}")
    return _lower_keys(obj)


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
    if value is None or isinstance(value, str):
        return value
    raise _wrong_type(kind, name, "a string", value)


def _int(body: dict[str, Any], name: str, kind: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(kind, name, "an integer", value)
    return value


def _decode_base64(data: object, kind: str) -> bytes:
    if not isinstance(data, str):
        raise _wrong_type(kind, "data", "a base64 string", data)
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
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


def parse_inbound(text: str | bytes) -> InboundMessage:
    """Parse one inbound ACS message.

    Raises a :class:`~shared.errors.ProtocolError` subclass describing what was expected and
    what arrived; nothing else escapes, whatever the input.
    """
    msg = _load_object(text)
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

    def receive(self, text: str | bytes) -> InboundMessage:
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
    data = base64.b64encode(pcm).decode("ascii")
    return '{"kind":"AudioData","audioData":{"data":"' + data + '"}}'


def build_stop_audio() -> str:
    """Outbound ``StopAudio``: the call platform drops what it has queued."""
    return '{"kind":"StopAudio","stopAudio":{}}'


def parse_outbound(text: str | bytes) -> OutboundMessage:
    """Parse an outbound message in any spelling seen in working code.

    Accepts ``{"Kind":"AudioData","AudioData":{"Data":…},"StopAudio":null}``, camelCase
    ``{"kind":"AudioData","audioData":{"data":…}}``, the JS SDK helpers'
    ``{"kind":"audioData",…}`` and ``{"kind":"stopAudio","stopAudio":{}}``.
    """
    msg = _load_object(text)
    kind = _kind(msg)
    lowered = kind.lower()
    if lowered == "audiodata":
        body = _body(msg, "audiodata", kind)
        pcm = _decode_base64(body.get("data"), kind)
        return OutboundAudio(pcm=pcm)
    if lowered == "stopaudio":
        return StopAudio()
    raise UnknownKind(f"expected kind AudioData or StopAudio, got {kind[:40]!r}", kind[:40])
