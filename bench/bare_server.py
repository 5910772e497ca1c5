"""The ceiling for the ingest benchmark: a bare ``websockets`` server that only parses.

It accepts connections on any path, parses every message as the gateway's codec does (JSON, key
casing, field types, strict base64, frame size against the ``AudioMetadata``) and counts frames.
Nothing is published anywhere. ``GET /stats`` returns the count as JSON.

The parsing is its own and plain stdlib (``json``, ``binascii``): the codec the stdlib way, as
the gateway's codec was before it took orjson and pybase64 (``docs/performance.md``), so that the
reference does not get faster with the gateway's optimisations.
``tests/unit/shared/protocols/test_acs.py`` checks that it accepts and rejects what the codec
does.

    python -m bench.bare_server --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

_RATES = {16000: 640, 24000: 960}  # Hz: bytes of PCM in a 20 ms frame
_TONES = frozenset("0123456789*#ABCDabcd")


class Rejected(Exception):
    """What the codec would answer with a ProtocolError."""


@dataclass(frozen=True, slots=True)
class Frame:
    """What the codec makes of an AudioData (so the reference builds as much)."""

    pcm: bytes
    timestamp: str | None
    participant_raw_id: str | None
    silent: bool


def _lower(obj: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in obj.items()}


# The same steps, calls included, as the codec's stdlib version took for each message.


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise Rejected from None
    if not isinstance(obj, dict):
        raise Rejected
    return _lower(obj)


def _kind(msg: dict[str, Any]) -> str:
    kind = msg.get("kind")
    if not isinstance(kind, str):
        raise Rejected
    return kind


def _body(msg: dict[str, Any], name: str) -> dict[str, Any]:
    body = msg.get(name)
    if not isinstance(body, dict):
        raise Rejected
    return _lower(body)


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    raise Rejected


def _int(body: dict[str, Any], name: str, default: object = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected
    return value


def _decode_base64(data: object) -> bytes:
    if not isinstance(data, str):
        raise Rejected
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except ValueError:
        raise Rejected from None


def _audio(msg: dict[str, Any]) -> Frame:
    body = _body(msg, "audiodata")
    pcm = _decode_base64(body.get("data"))
    silent = body.get("silent", False)
    if silent is None:
        silent = False
    if not isinstance(silent, bool):
        raise Rejected
    return Frame(
        pcm=pcm,
        timestamp=_opt_str(body, "timestamp"),
        participant_raw_id=_opt_str(body, "participantrawid") or None,
        silent=silent,
    )


def _metadata(msg: dict[str, Any]) -> int:
    """The frame size the AudioMetadata announces."""
    body = _body(msg, "audiometadata")
    encoding = body.get("encoding")
    if not isinstance(encoding, str) or encoding.upper() != "PCM":
        raise Rejected
    expected = _RATES.get(_int(body, "samplerate"))
    if expected is None or _int(body, "channels") != 1:
        raise Rejected
    if _int(body, "length", expected) not in (expected, 20):
        raise Rejected
    _opt_str(body, "subscriptionid")
    return expected


def _dtmf(msg: dict[str, Any]) -> None:
    body = _body(msg, "dtmfdata")
    tone = body.get("data")
    if not isinstance(tone, str) or len(tone) != 1 or tone not in _TONES:
        raise Rejected
    _opt_str(body, "timestamp")
    _opt_str(body, "participantrawid")


_PARSERS: dict[str, Callable[[dict[str, Any]], Frame | int | None]] = {
    "audiometadata": _metadata,
    "audiodata": _audio,
    "dtmfdata": _dtmf,
}


def parse(text: str | bytes) -> Frame | int | None:
    """A frame, the frame size an AudioMetadata announces, or None for DTMF."""
    msg = _load(text)
    parser = _PARSERS.get(_kind(msg).lower())
    if parser is None:
        raise Rejected
    return parser(msg)


class Session:
    """One connection: ``AudioMetadata`` first, then frames of the announced size."""

    __slots__ = ("frame_bytes",)

    def __init__(self) -> None:
        self.frame_bytes: int | None = None

    def receive(self, text: str | bytes) -> Frame | None:
        """The frame in ``text``, None for another accepted message; raises Rejected."""
        message = parse(text)
        if isinstance(message, int):
            if self.frame_bytes is not None and message != self.frame_bytes:
                raise Rejected
            self.frame_bytes = message
            return None
        if self.frame_bytes is None:
            raise Rejected
        if isinstance(message, Frame) and len(message.pcm) != self.frame_bytes:
            raise Rejected
        return message


class Counter:
    frames = 0
    rejects = 0


async def handle(connection: ServerConnection) -> None:
    session = Session()
    try:
        async for message in connection:
            try:
                if session.receive(message) is not None:
                    Counter.frames += 1
            except Rejected:
                Counter.rejects += 1
    except ConnectionClosed:
        pass


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/stats":
        body = json.dumps({"frames": Counter.frames, "rejects": Counter.rejects})
        return connection.respond(HTTPStatus.OK, body + "\n")
    return None


async def main(host: str, port: int, max_size: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handle, host, port, process_request=process_request, max_size=max_size, compression=None
    ):
        print(f"bare server on ws://{host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-size", type=int, default=64 * 1024)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.max_size))
