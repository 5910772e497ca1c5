"""One exception hierarchy for the whole project.

Every error callstream raises on purpose derives from :class:`CallstreamError`. Protocol errors
carry the WebSocket close code they map to and whether the gateway closes the call or counts and
skips the message (see ``docs/protocol.md``), so the I/O edge never has to guess.
"""

from __future__ import annotations

# WebSocket close codes (RFC 6455 §7.4.1) used by the gateway.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

# A close reason must fit in a control frame: 125 bytes minus the 2-byte code.
_MAX_REASON_BYTES = 123


class CallstreamError(Exception):
    """Base class of every error raised deliberately by callstream."""


class ConfigError(CallstreamError):
    """Settings or command-line options are missing or inconsistent."""


class BusError(CallstreamError):
    """The Redis bus could not be reached or refused a command."""


class InvalidCallId(CallstreamError, ValueError):
    """A call id outside the alphabet and length callstream accepts (it names Redis keys)."""


class EntryError(CallstreamError, ValueError):
    """A stream entry lacks a field or holds a value of the wrong shape."""


class EventError(CallstreamError, ValueError):
    """An event that is not a well-formed envelope (not JSON, a field missing or mistyped)."""


class AuthError(CallstreamError):
    """A caller could not be authenticated (missing, expired or badly signed token)."""


class ProtocolError(CallstreamError):
    """A message broke the ACS wire protocol.

    ``close_code`` is the WebSocket close code the gateway uses when the error is fatal;
    ``fatal`` says whether the call is closed (True) or the message is counted and skipped.
    ``kind`` is a short stable label for metrics (``reason`` label of the reject counter).
    """

    close_code: int = CLOSE_INVALID_PAYLOAD
    fatal: bool = True
    kind: str = "protocol"

    @property
    def reason(self) -> str:
        """The message, trimmed to fit a WebSocket close frame."""
        text = str(self)
        encoded = text.encode("utf-8")
        if len(encoded) <= _MAX_REASON_BYTES:
            return text
        return encoded[: _MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


class MalformedMessage(ProtocolError):
    """Not JSON, not a JSON object, or a required field is missing or of the wrong type."""

    kind = "malformed"


class UnsupportedData(ProtocolError):
    """A binary WebSocket message: ACS only sends text frames of JSON."""

    close_code = CLOSE_UNSUPPORTED_DATA
    kind = "binary"


class UnknownKind(ProtocolError):
    """A well-formed message of a kind this codec does not know (counted and skipped)."""

    close_code = CLOSE_UNSUPPORTED_DATA
    fatal = False
    kind = "unknown_kind"

    def __init__(self, message: str, message_kind: str) -> None:
        super().__init__(message)
        self.message_kind = message_kind


class InvalidFormat(ProtocolError):
    """``AudioMetadata`` announces a format callstream does not accept."""

    kind = "invalid_format"


class InvalidFrame(ProtocolError):
    """One audio frame is unusable: bad base64 or the wrong length (counted and skipped)."""

    fatal = False
    kind = "invalid_frame"


class TooManyParticipants(ProtocolError):
    """An unmixed call named more distinct participants than a call may have
    (``CS_MAX_PARTICIPANTS``): ACS streams at most four at a time."""

    close_code = CLOSE_POLICY_VIOLATION
    kind = "too_many_participants"


class TooFast(ProtocolError):
    """A call sends messages faster than real time, for longer than a burst
    (``CS_MAX_MESSAGES_PER_S``)."""

    close_code = CLOSE_POLICY_VIOLATION
    kind = "too_fast"


class OutOfOrder(ProtocolError):
    """A message arrived in a state where it is not allowed, e.g. audio before metadata."""

    close_code = CLOSE_POLICY_VIOLATION
    kind = "out_of_order"
