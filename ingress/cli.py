"""``callstream gateway``: the ACS-compatible WebSocket endpoint, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from callstream.ingress.server import Gateway
from callstream.shared.settings import Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Gateway(
        settings,
        host=args.host,
        port=args.port,
        allow_unauthenticated=args.allow_unauthenticated,
    ) as gateway:
        print(f"callstream gateway listening on {gateway.url}", flush=True)
        await stop.wait()
        log.info("stopping: closing calls with 1001")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(serve(settings, args))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="the ACS-compatible WebSocket endpoint (ingress + egress)",
        description="Serve ACS audio streaming on /ws and /ws/{call_id}; /healthz, /readyz and "
        "/metrics on the same port.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="accept calls without a bearer token on a non-loopback address",
    )
    parser.set_defaults(run=_run)
