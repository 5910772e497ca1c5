"""The baseline of the echo benchmark: a bare ``websockets`` server that echoes every frame.

For every text message it does what the gateway's codec does to an inbound message, with the
standard library only (``json``, ``binascii``; no orjson or other speed-ups: this is the
reference) — parse the JSON, find the ``AudioMetadata`` or ``AudioData`` body (any key casing),
decode the frame's base64 strictly and check its length against the announced format — and
sends the same text straight back on the same socket, at once (not paced). Nothing is published
anywhere. ``GET /stats`` returns the counts as JSON.

    python -m bench.bare_echo --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import json
import signal
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

FRAME_MS = 20


class Counter:
    frames = 0
    rejects = 0


def _lower(obj: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in obj.items()}


def parse(message: str | bytes, expected: int | None) -> tuple[bool, int]:
    """Whether ``message`` is an audio frame, and the frame length expected after it.

    ``expected`` is the frame length announced so far (``None``: no metadata yet). Raises
    ``ValueError`` for anything the gateway would refuse: invalid JSON, an unknown kind,
    a frame before the metadata, invalid base64 or a frame of the wrong length.
    """
    msg = json.loads(message)
    if not isinstance(msg, dict):
        raise ValueError("not a JSON object")
    msg = _lower(msg)
    kind = str(msg.get("kind", "")).lower()
    if kind == "audiodata":
        body = msg.get("audiodata")
        if not isinstance(body, dict) or expected is None:
            raise ValueError("AudioData without a body or before AudioMetadata")
        data = _lower(body).get("data")
        if not isinstance(data, str):
            raise ValueError("AudioData without base64 data")
        pcm = binascii.a2b_base64(data, strict_mode=True)  # binascii.Error is a ValueError
        if len(pcm) != expected:
            raise ValueError(f"expected {expected} bytes of PCM, got {len(pcm)}")
        return True, expected
    if kind == "audiometadata":
        body = msg.get("audiometadata")
        if not isinstance(body, dict):
            raise ValueError("AudioMetadata without a body")
        rate = _lower(body).get("samplerate")
        if rate not in (16000, 24000):
            raise ValueError(f"expected sampleRate 16000 or 24000, got {rate!r}")
        return False, int(rate) * FRAME_MS // 1000 * 2
    raise ValueError(f"unexpected kind {kind!r}")


async def handle(connection: ServerConnection) -> None:
    expected: int | None = None
    try:
        async for message in connection:
            try:
                is_frame, expected = parse(message, expected)
            except (ValueError, TypeError, RecursionError):
                Counter.rejects += 1
                continue
            if is_frame:
                Counter.frames += 1
                await connection.send(message)
    except ConnectionClosed:
        pass


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/stats":
        body = json.dumps({"frames": Counter.frames, "rejects": Counter.rejects})
        return connection.respond(HTTPStatus.OK, body + "\n")
    return None


async def main(host: str, port: int, max_size: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        handle, host, port, process_request=process_request, max_size=max_size, compression=None
    ):
        print(f"bare echo server on ws://{host}:{port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-size", type=int, default=64 * 1024)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.max_size))
