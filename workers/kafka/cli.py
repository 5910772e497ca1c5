"""``callstream worker kafka``: the bridge and the analytics, one Faust app, until SIGTERM/SIGINT.

Stopping: the bridge finishes the batch in flight (acknowledged in Redis once Kafka has it),
then the Faust worker stops (its agents commit what they processed), then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from callstream.health import serve_health
from callstream.shared.settings import Settings
from callstream.workers.kafka.app import embedded_worker, event_topics, make_app
from callstream.workers.kafka.bridge import Bridge
from callstream.workers.kafka.config import KafkaConfig

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0  # for the batch in flight, then for Faust


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callstream worker kafka",
        description="Mirror cs:insights to Kafka topics (one per event family, keyed by call "
        "id, the event id in a header) and compute fleet analytics per tenant and queue with "
        "Faust. Kafka settings come from the environment (KAFKA_BOOTSTRAP, "
        "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*; docs/kafka.md).",
    )
    parser.add_argument(
        "--group",
        default="kafka",
        help="the bridge's consumer group on cs:insights (default kafka)",
    )
    parser.add_argument(
        "--consumer",
        default=socket.gethostname(),
        help="this replica's consumer name in that group (default: the host name)",
    )
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="a new group starts at the first entry cs:insights holds (default: new entries)",
    )
    parser.add_argument(
        "--no-analytics",
        action="store_true",
        help="mirror only; run no Faust agents or tables",
    )
    parser.add_argument(
        "--app-id",
        default=None,
        help="the Faust app id: its Kafka consumer group and table changelogs "
        "(default: {topic prefix}-analytics)",
    )
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="(default 127.0.0.1)")
    return parser


async def serve(settings: Settings, options: argparse.Namespace, config: KafkaConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = CollectorRegistry()
    app = make_app(config, options.app_id or f"{config.topic_prefix}-analytics")
    families = event_topics(app, config)
    if not options.no_analytics:
        from callstream.workers.kafka import analytics  # noqa: PLC0415

        analytics.install(app, config, families)
    view = None
    if settings.redact:
        from callstream.workers.runtime import redacting_view  # noqa: PLC0415

        view = redacting_view()
    bridge = Bridge(
        settings,
        config,
        families,
        group=options.group,
        consumer=options.consumer,
        from_start=options.from_start,
        view=view,
        registry=registry,
    )
    health = serve_health(options.metrics_host, options.metrics_port, registry, bridge.readiness)
    worker = embedded_worker(app)
    try:
        await worker.start()
        for topic in families.values():
            await topic.maybe_declare()
        running = asyncio.create_task(bridge.run(), name="kafka-bridge")
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        log.info("worker kafka: stopping (%d records sent)", bridge.sent)
        bridge.stop()
        stopped.cancel()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await running
        except TimeoutError:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            log.error("the batch in flight was not acknowledged in time; it stays pending")
    finally:
        # Faust's stop can hang in a commit while Kafka is unreachable, shielded from
        # cancellation, its consumer thread keeping the process alive: a deadline, then out.
        # (What was not committed or acknowledged is delivered again: at least once.)
        deadline = loop.call_later(STOP_TIMEOUT_S, _hard_exit)
        with contextlib.suppress(Exception):
            await worker.stop()
        deadline.cancel()
        if health is not None:
            health.close()
    return 0


def _hard_exit() -> None:
    log.error(
        "the Faust app did not stop within %g s (Kafka unreachable?): exiting", STOP_TIMEOUT_S
    )
    logging.shutdown()
    os._exit(1)


def run(argv: Sequence[str], settings: Settings) -> int:
    options = parser().parse_args(argv)
    # Faust, mode and aiokafka log every service's start and stop at INFO.
    for name in ("faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    config = KafkaConfig.from_env(os.environ, settings.prefix)
    return asyncio.run(serve(settings, options, config))
