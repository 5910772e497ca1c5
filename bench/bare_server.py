"""The ceiling for the ingest benchmark: a bare ``websockets`` server that only parses.

It accepts connections on any path, runs every message through the same codec as the gateway
(``InboundSession.receive``: JSON, key casing, base64, frame size) and counts frames. Nothing is
published anywhere. ``GET /stats`` returns the count as JSON.

    python -m bench.bare_server --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from callstream.shared.errors import ProtocolError
from callstream.shared.protocols.acs import AudioData, InboundSession


class Counter:
    frames = 0
    rejects = 0


async def handle(connection: ServerConnection) -> None:
    session = InboundSession()
    try:
        async for message in connection:
            try:
                if isinstance(session.receive(message), AudioData):
                    Counter.frames += 1
            except ProtocolError:
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
