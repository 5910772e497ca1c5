"""``callstream worker KIND``: run one replica of a worker kind until SIGTERM/SIGINT.

Kinds are found under the entry-point group ``callstream.workers`` (the built-in ``echo`` and
``transcribe`` are registered there by callstream itself; a package of yours adds its own, see
docs/workers.md). Only the kind asked for is imported, so an echo replica loads neither
PocketSphinx nor the Azure SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from prometheus_client import CollectorRegistry

from callstream.health import serve_health
from callstream.shared.errors import ConfigError
from callstream.shared.settings import Settings
from callstream.workers.api import Kind
from callstream.workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

GROUP = "callstream.workers"
# Built-in kinds whose dependencies are an extra.
EXTRAS = {"transcribe": "transcribe", "nlp": "nlp", "agent": "agent"}
KAFKA = "kafka"  # the Kafka bridge (workers/kafka): run by `callstream worker kafka` too


def available() -> dict[str, EntryPoint]:
    """Every registered kind by name (not imported)."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=GROUP):
        other = found.get(point.name)
        chosen = point
        if other is not None and other.value != point.value:
            chosen = point if point.value.startswith("callstream.") else other
            log.warning(
                "worker kind %s is registered twice (%s, %s); using %s",
                point.name,
                other.value,
                point.value,
                chosen.value,
            )
        found[point.name] = chosen
    return found


def load_kind(name: str) -> Kind:
    """Import the kind registered as ``name``; ConfigError if there is none or it cannot load."""
    kinds = available()
    point = kinds.get(name)
    if point is None:
        known = ", ".join(sorted(kinds)) or "none"
        raise ConfigError(f"no worker kind {name!r} is installed (installed: {known})")
    try:
        kind = point.load()
    except ImportError as exc:
        extra = EXTRAS.get(name)
        hint = f": pip install 'callstream[{extra}]'" if extra else ""
        raise ConfigError(
            f"worker kind {name} cannot be loaded ({exc}); are its dependencies installed{hint}?"
        ) from None
    if not isinstance(kind, Kind):
        raise ConfigError(
            f"entry point {point.value} of worker kind {name} is a {type(kind).__name__}, "
            "not a callstream.workers.api.Kind"
        )
    if kind.name != name:
        raise ConfigError(f"entry point {name} names a kind called {kind.name!r}")
    return kind


def kind_parser(kind: Kind) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"callstream worker {kind.name}", description=kind.help or None
    )
    parser.add_argument(
        "--max-calls",
        type=int,
        default=kind.max_calls,
        help=f"calls served at once by this replica (default {kind.max_calls})",
    )
    parser.add_argument(
        "--consumer", default=None, help="consumer name in the group (default hostname-pid)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics, /healthz and /readyz on this port (default: not served)",
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
    if kind.add_arguments is not None:
        kind.add_arguments(parser)
    return parser


async def serve(settings: Settings, kind: Kind, options: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = CollectorRegistry()
    runtime = WorkerRuntime.for_kind(
        settings,
        kind,
        options,
        max_calls=options.max_calls,
        consumer=options.consumer,
        heartbeat_s=options.heartbeat_s,
        registry=registry,
    )
    health = serve_health(options.metrics_host, options.metrics_port, registry, runtime.readiness)
    if health is not None:
        log.info(
            "metrics, /healthz and /readyz on http://%s:%d",
            options.metrics_host,
            options.metrics_port,
        )
    try:
        async with runtime:
            # What was loaded to serve (models, lexicons, the kind's code) lives as long as
            # the process: out of the collector's sight, a full collection does not walk it
            # (those walks stalled the event loop for up to 90 ms: docs/performance.md).
            gc.freeze()
            stopped = asyncio.create_task(stop.wait())
            crashed = asyncio.create_task(runtime.wait_closed())
            await asyncio.wait({stopped, crashed}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            crashed.cancel()
            log.info("worker %s: stopping, handing back %d calls", kind.name, len(runtime.owned))
    finally:
        if health is not None:
            health.close()
    return 0 if runtime.failure is None else 1


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.kind == KAFKA:  # not a kind that owns calls: a consumer of cs:insights
        try:
            from callstream.workers.kafka import cli as kafka_cli  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigError(
                f"worker kafka cannot be loaded ({exc}): pip install 'callstream[kafka]'"
            ) from None
        return kafka_cli.run(args.args, settings)
    kind = load_kind(args.kind)
    options = kind_parser(kind).parse_args(args.args)
    if options.max_calls < 1:
        raise ConfigError(f"--max-calls must be at least 1, got {options.max_calls}")
    return asyncio.run(serve(settings, kind, options))


def register(subparsers: Any) -> None:
    names = ", ".join(sorted([*available(), KAFKA]))
    worker = subparsers.add_parser(
        "worker",
        help="run a worker replica of one kind",
        description="Run one replica of a worker kind until SIGTERM or SIGINT. "
        "`callstream worker KIND --help` lists the kind's options.",
    )
    worker.add_argument("kind", metavar="KIND", help=f"the worker kind ({names})")
    worker.add_argument("args", nargs=argparse.REMAINDER, help="the kind's options")
    worker.set_defaults(run=_run)
