"""The baseline of the echo benchmark: a bare ``websockets`` server that echoes every frame.

For every text message it does what the gateway's codec does to an inbound message, with the
standard library only — the ingest benchmark's reference parse (``bench/bare_server.py``: JSON,
any key casing, strict base64, the frame's length against the announced format) — and sends
the same text straight back on the same socket, at once (not paced). Nothing is published
anywhere. ``GET /stats`` returns the counts as JSON.

    python -m bench.bare_echo --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bench.bare_server import Counter, Rejected, Session, process_request


async def handle(connection: ServerConnection) -> None:
    session = Session()
    try:
        async for message in connection:
            try:
                frame = session.receive(message)
            except Rejected:
                Counter.rejects += 1
                continue
            if frame is not None:
                Counter.frames += 1
                await connection.send(message)
    except ConnectionClosed:
        pass


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
