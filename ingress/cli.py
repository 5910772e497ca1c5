"""``callstream gateway``: the ACS-compatible WebSocket endpoint, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from callstream.health import serve_health
from callstream.ingress.server import Gateway
from callstream.shared.settings import Settings

log = logging.getLogger(__name__)

AUTH_OFF = (
    "authentication is OFF: anyone who reaches this port can stream a call "
    "(set CS_AUTH_JWKS_URL or CS_AUTH_JWKS_FILE, CS_AUTH_ISSUER and CS_AUTH_AUDIENCE)"
)


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
        metrics_on_call_port=args.metrics_port is None,
    ) as gateway:
        health = serve_health(
            args.metrics_host, args.metrics_port, gateway.registry, gateway.readiness
        )
        auth = "token validation on" if settings.auth.enabled else AUTH_OFF
        if not settings.auth.enabled:
            log.warning("%s", AUTH_OFF)
        print(f"callstream gateway listening on {gateway.url} ({auth})", flush=True)
        try:
            await stop.wait()
            # Drain: no new call, the live ones end by themselves (a second signal, or
            # CS_DRAIN_TIMEOUT_S, cuts it short: what is left is closed with 1001).
            stop.clear()
            draining = asyncio.create_task(gateway.drain(settings.drain_timeout_s))
            again = asyncio.create_task(stop.wait())
            await asyncio.wait({draining, again}, return_when=asyncio.FIRST_COMPLETED)
            again.cancel()
            left = await draining if draining.done() else gateway.calls
            draining.cancel()
            log.info("stopping: closing %d calls with 1001", left)
        finally:
            if health is not None:
                health.close()
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(serve(settings, args))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="the ACS-compatible WebSocket endpoint (ingress + egress)",
        description="Serve ACS audio streaming on /ws and /ws/{call_id}; /healthz, /readyz and "
        "/metrics on the same port, or on --metrics-port.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="accept calls without a bearer token on a non-loopback address",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics, /healthz and /readyz on this port instead of the call port "
        "(which then answers /metrics with 404: keep the metrics off a public address)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics port (default 127.0.0.1)",
    )
    parser.set_defaults(run=_run)
