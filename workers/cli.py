"""``callstream worker KIND``: run one replica of a worker kind until SIGTERM/SIGINT.

Adding a kind: write its module with a :data:`~workers.base.HandlerFactory`, then add a parser
in :func:`register` whose ``factory`` builds it from the parsed options.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from callstream.shared.errors import ConfigError
from callstream.shared.settings import Settings
from callstream.workers.base import HandlerFactory
from callstream.workers.echo import echo_factory
from callstream.workers.runtime import WorkerRuntime
from callstream.workers.stt.pocketsphinx_engine import pocketsphinx_factory
from callstream.workers.transcribe import transcribe_factory

log = logging.getLogger(__name__)

FactoryFromArgs = Callable[[argparse.Namespace], HandlerFactory]


async def serve(
    settings: Settings, kind: str, factory: HandlerFactory, args: argparse.Namespace
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = CollectorRegistry()
    metrics_server = None
    if args.metrics_port is not None:
        # prometheus_client's own server, in its thread: scrapes never wait for the event loop.
        try:
            metrics_server, _ = start_http_server(args.metrics_port, args.metrics_host, registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on port {args.metrics_port}: {exc}") from None
        log.info("metrics on http://%s:%d/metrics", args.metrics_host, args.metrics_port)
    try:
        async with WorkerRuntime(
            settings,
            kind,
            factory,
            max_calls=args.max_calls,
            consumer=args.consumer,
            heartbeat_s=args.heartbeat_s,
            registry=registry,
        ) as runtime:
            stopped = asyncio.create_task(stop.wait())
            crashed = asyncio.create_task(runtime.wait_closed())
            await asyncio.wait({stopped, crashed}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            crashed.cancel()
            log.info("worker %s: stopping, handing back %d calls", kind, len(runtime.owned))
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    return 0


def _runner(
    kind: str, factory_from_args: FactoryFromArgs
) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        return asyncio.run(serve(settings, kind, factory_from_args(args), args))

    return run


def _common(parser: argparse.ArgumentParser, max_calls: int) -> None:
    parser.add_argument(
        "--max-calls",
        type=int,
        default=max_calls,
        help=f"calls served at once by this replica (default {max_calls})",
    )
    parser.add_argument(
        "--consumer", default=None, help="consumer name in the group (default hostname-pid)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (default: not served)",
    )
    parser.add_argument(
        "--metrics-host", default="0.0.0.0", help="address of the metrics port (default 0.0.0.0)"
    )
    parser.add_argument(
        "--heartbeat-s",
        type=float,
        default=1.0,
        help="claim refresh and checkpoint period; a dead replica's calls are "
        "taken over after three (default 1.0)",
    )


def register(subparsers: Any) -> None:
    worker = subparsers.add_parser("worker", help="run a worker replica of one kind")
    kinds = worker.add_subparsers(dest="kind", required=True, metavar="KIND")

    echo = kinds.add_parser("echo", help="play every non-silent inbound frame back into the call")
    _common(echo, max_calls=50)
    echo.add_argument(
        "--delay-ms", type=float, default=0.0, help="hold each frame back this long (default 0)"
    )
    echo.set_defaults(run=_runner("echo", lambda args: echo_factory(args.delay_ms)))

    transcribe = kinds.add_parser(
        "transcribe", help="speech events and ACS-shaped transcripts (offline PocketSphinx)"
    )
    # PocketSphinx holds the GIL: one replica is one core, about two real-time streams
    # (docs/performance.md). Scale with replicas, not with --max-calls.
    _common(transcribe, max_calls=2)
    transcribe.add_argument(
        "--engine",
        choices=("pocketsphinx", "azure"),
        default="pocketsphinx",
        help="speech-to-text engine: pocketsphinx (offline, default) or azure "
        "(CS_AZURE_SPEECH_KEY and CS_AZURE_SPEECH_REGION or _ENDPOINT)",
    )
    transcribe.set_defaults(run=_runner("transcribe", _transcribe_factory))


def _transcribe_factory(args: argparse.Namespace) -> HandlerFactory:
    if args.engine == "azure":
        # Imported here: the SDK is only loaded by replicas that use it.
        from callstream.workers.stt.azure_engine import (  # noqa: PLC0415
            AzureSpeechSettings,
            azure_factory,
            check_service,
        )

        settings = AzureSpeechSettings.from_env(os.environ)
        check_service(settings)  # one clear error now rather than one per call
        log.info("azure speech: %s, %s", settings.endpoint or settings.region, settings.language)
        return transcribe_factory(azure_factory(settings))
    return transcribe_factory(pocketsphinx_factory)
