"""Encoding of Redis stream entries (pure; bytes in, typed records out).

Field names follow docs/architecture.md. PCM travels as raw bytes, never base64. Redis returns
field names and values as ``bytes``; :func:`decode_in`, :func:`decode_out` and
:func:`decode_call` turn such a mapping back into the typed record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from callstream.shared import errors
from callstream.shared.audio import AudioFormat, Mode

# What XADD accepts (the same union as redis-py's FieldT/EncodableT, without importing it).
FieldValue = bytes | bytearray | memoryview | str | int | float
Fields = dict[FieldValue, FieldValue]
# What Redis returns for one entry, and for an XREAD of several streams.
RawFields = Mapping[bytes, bytes]
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]
XReadReply = list[tuple[bytes, StreamEntries]]


EntryError = errors.EntryError  # here too: where entries are decoded


def _get(raw: RawFields, name: bytes) -> bytes:
    try:
        return raw[name]
    except KeyError:
        raise EntryError(f"stream entry lacks field {name.decode()!r}: {sorted(raw)}") from None


def _text(raw: RawFields, name: bytes) -> str:
    value = _get(raw, name)
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise EntryError(f"field {name.decode()!r} should be UTF-8, got {value[:40]!r}") from None


def _int(raw: RawFields, name: bytes) -> int:
    value = _get(raw, name)
    try:
        return int(value)
    except ValueError:
        raise EntryError(f"field {name.decode()!r} should be an integer, got {value!r}") from None


# --------------------------------------------------------------------------- cs:call:{id}:in


@dataclass(frozen=True, slots=True)
class InFrame:
    """One 20 ms inbound frame.

    ``seq`` counts the call's frames from 0 across all channels (gaps reveal skipped frames);
    ``ts_ms`` is the platform's timestamp (epoch ms; the gateway's clock when absent);
    ``participant`` is the raw id ("" when mixed) and ``channel`` its stable slot 0-3.
    """

    seq: int
    ts_ms: int
    participant: str
    channel: int
    silent: bool
    pcm: bytes


@dataclass(frozen=True, slots=True)
class InDtmf:
    """A DTMF tone pressed during the call."""

    seq: int
    ts_ms: int
    participant: str
    tone: str


@dataclass(frozen=True, slots=True)
class InEnd:
    """The call's inbound audio has ended; nothing follows this entry."""

    reason: str


InEntry = InFrame | InDtmf | InEnd


def encode_in(entry: InEntry) -> Fields:
    if isinstance(entry, InFrame):
        return {
            b"kind": b"audio",
            b"seq": entry.seq,
            b"ts": entry.ts_ms,
            b"participant": entry.participant,
            b"channel": entry.channel,
            b"silent": b"1" if entry.silent else b"0",
            b"pcm": entry.pcm,
        }
    if isinstance(entry, InDtmf):
        return {
            b"kind": b"dtmf",
            b"seq": entry.seq,
            b"ts": entry.ts_ms,
            b"participant": entry.participant,
            b"tone": entry.tone,
        }
    return {b"kind": b"end", b"reason": entry.reason}


def decode_in(raw: RawFields) -> InEntry:
    kind = _get(raw, b"kind")
    if kind == b"audio":
        try:  # the hot path (50 a second per call): one try for the common, well-formed frame
            return InFrame(
                int(raw[b"seq"]),
                int(raw[b"ts"]),
                raw[b"participant"].decode(),
                int(raw[b"channel"]),
                raw[b"silent"] == b"1",
                raw[b"pcm"],
            )
        except (KeyError, ValueError):
            pass  # say precisely what is wrong:
        return InFrame(
            seq=_int(raw, b"seq"),
            ts_ms=_int(raw, b"ts"),
            participant=_text(raw, b"participant"),
            channel=_int(raw, b"channel"),
            silent=_get(raw, b"silent") == b"1",
            pcm=_get(raw, b"pcm"),
        )
    if kind == b"dtmf":
        return InDtmf(
            seq=_int(raw, b"seq"),
            ts_ms=_int(raw, b"ts"),
            participant=_text(raw, b"participant"),
            tone=_text(raw, b"tone"),
        )
    if kind == b"end":
        return InEnd(reason=_text(raw, b"reason"))
    raise EntryError(f"inbound entry kind should be audio, dtmf or end, got {kind!r}")


# --------------------------------------------------------------------------- cs:call:{id}:out


@dataclass(frozen=True, slots=True)
class OutAudio:
    """PCM of any length in the call's format; egress re-chunks it into 20 ms frames."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class OutStop:
    """Barge-in: drop everything queued and tell the platform to stop playing."""


@dataclass(frozen=True, slots=True)
class OutPause:
    """Hold playback: tell the platform to stop at once, but keep what was not yet heard (what
    the platform dropped too) to play on :class:`OutResume`. For a sound that may be a barge-in
    or only a cough: an :class:`OutStop` later drops it all."""


@dataclass(frozen=True, slots=True)
class OutResume:
    """Play on from where :class:`OutPause` held it."""


@dataclass(frozen=True, slots=True)
class OutMark:
    """Playback reached this point: egress emits a ``playback.mark`` event when it does."""

    name: str


OutEntry = OutAudio | OutStop | OutMark | OutPause | OutResume


def encode_out(entry: OutEntry) -> Fields:
    if isinstance(entry, OutAudio):
        return {b"kind": b"audio", b"pcm": entry.pcm}
    if isinstance(entry, OutStop):
        return {b"kind": b"stop"}
    if isinstance(entry, OutPause):
        return {b"kind": b"pause"}
    if isinstance(entry, OutResume):
        return {b"kind": b"resume"}
    return {b"kind": b"mark", b"name": entry.name}


def decode_out(raw: RawFields) -> OutEntry:
    kind = _get(raw, b"kind")
    if kind == b"audio":
        return OutAudio(pcm=_get(raw, b"pcm"))
    if kind == b"stop":
        return OutStop()
    if kind == b"mark":
        return OutMark(name=_text(raw, b"name"))
    if kind == b"pause":
        return OutPause()
    if kind == b"resume":
        return OutResume()
    raise EntryError(
        f"outbound entry kind should be audio, stop, mark, pause or resume, got {kind!r}"
    )


# --------------------------------------------------------------------------- cs:calls


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A call began streaming: its id and audio format."""

    call_id: str
    rate_hz: int
    mode: Mode
    time_ms: int
    gateway: str

    @property
    def format(self) -> AudioFormat:
        return AudioFormat(self.rate_hz)


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A call's socket closed; ``reason`` says why (``normal`` or an error label)."""

    call_id: str
    time_ms: int
    reason: str


CallEntry = CallStarted | CallEnded


def encode_call(entry: CallEntry) -> Fields:
    if isinstance(entry, CallStarted):
        return {
            b"type": b"started",
            b"call_id": entry.call_id,
            b"rate": entry.rate_hz,
            b"frame_bytes": entry.format.frame_bytes,
            b"mode": entry.mode,
            b"time": entry.time_ms,
            b"gateway": entry.gateway,
        }
    return {
        b"type": b"ended",
        b"call_id": entry.call_id,
        b"time": entry.time_ms,
        b"reason": entry.reason,
    }


def decode_call(raw: RawFields) -> CallEntry:
    kind = _get(raw, b"type")
    if kind == b"started":
        mode = _text(raw, b"mode")
        if mode not in ("mixed", "unmixed"):
            raise EntryError(f"call mode should be mixed or unmixed, got {mode!r}")
        return CallStarted(
            call_id=_text(raw, b"call_id"),
            rate_hz=_int(raw, b"rate"),
            mode="mixed" if mode == "mixed" else "unmixed",
            time_ms=_int(raw, b"time"),
            gateway=_text(raw, b"gateway"),
        )
    if kind == b"ended":
        return CallEnded(
            call_id=_text(raw, b"call_id"),
            time_ms=_int(raw, b"time"),
            reason=_text(raw, b"reason"),
        )
    raise EntryError(f"call entry type should be started or ended, got {kind!r}")


# ---------------------------------------------------------------------- stream ids

MAX_SEQ = 2**64 - 1


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``"ms-seq"`` as a tuple that orders like Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise EntryError(f"not a stream entry id: {entry_id!r}") from None


def previous_id(entry_id: str) -> str:
    """The largest id before ``entry_id``: reading after it returns ``entry_id`` again."""
    ms, seq = parse_id(entry_id)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    if ms > 0:
        return f"{ms - 1}-{MAX_SEQ}"
    return "0-0"
