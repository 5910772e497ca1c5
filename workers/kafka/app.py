"""The Faust app of ``callstream worker kafka``: its Kafka connection, the event topics the bridge
writes, and a worker that runs inside our own asyncio program (our signal handlers, our
shutdown order), not as Faust's own command line."""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import Any

import faust
from faust.types import TopicT
from faust.types.auth import CredentialsT, SASLMechanism

from callstream.workers.kafka import topics
from callstream.workers.kafka.config import KafkaConfig


def credentials(config: KafkaConfig) -> CredentialsT | None:
    """SASL (PLAIN, SCRAM) and/or TLS, as aiokafka takes them through Faust."""
    context: ssl.SSLContext | None = None
    if config.uses_tls:
        context = ssl.create_default_context(cafile=config.ssl_cafile)
    if config.uses_sasl:
        mechanism = SASLMechanism(config.sasl_mechanism)
        return faust.SASLCredentials(
            username=config.sasl_username,
            password=config.sasl_password,
            mechanism=mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def make_app(config: KafkaConfig, app_id: str, **settings: Any) -> faust.App:
    """A Faust app on ``config``'s cluster; ``app_id`` names its consumer group and its
    tables' changelog topics. ``settings`` override Faust's (tests shorten its timers)."""
    options: dict[str, Any] = {
        "broker": [f"kafka://{address}" for address in config.bootstrap],
        "broker_credentials": credentials(config),
        "store": "memory://",  # tables are rebuilt from their changelog topics at start
        "topic_partitions": config.partitions,
        "topic_replication_factor": config.replication_factor,
        "web_enabled": False,
        "autodiscover": False,
        "consumer_auto_offset_reset": "earliest",
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,  # a record is acknowledged once every in-sync replica has it
        "broker_session_timeout": config.session_timeout_s,
        "broker_heartbeat_interval": min(3.0, config.session_timeout_s / 10),
        # A record Kafka has not acknowledged by then fails (Faust's default waits 20 minutes):
        # the bridge sends its batch again.
        "producer_request_timeout": 30.0,
        # Faust makes a directory for its app even with the memory store: not in the working
        # directory (read-only in the pods, the repository in development).
        "datadir": os.path.join(tempfile.gettempdir(), "callstream-faust", app_id),
    }
    os.makedirs(os.path.dirname(options["datadir"]), exist_ok=True)  # Faust makes only the last
    options.update(settings)
    return faust.App(app_id, **options)


def event_topics(app: faust.App, config: KafkaConfig) -> dict[str, TopicT]:
    """The topic of each event family, raw bytes (the bridge sends events' JSON as it is)."""
    return {
        name: app.topic(
            topics.topic_name(config.topic_prefix, name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=config.partitions,
            replicas=config.replication_factor,
            internal=True,  # declared (created) by the app with these partitions
        )
        for name in topics.FAMILIES
    }


class EmbeddedApp:
    """A Faust app run inside callstream's own asyncio program: ``app.start()`` and
    ``app.stop()`` themselves, not a ``faust.Worker``, which takes over the program's signal
    handlers, sends its stdout into logging and writes terminal control codes. callstream
    stops it itself, in order (the bridge's batch first)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def start(self) -> None:
        """Returns once the app's consumer has joined its group and its tables are restored."""
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()


def embedded_worker(app: faust.App) -> EmbeddedApp:
    return EmbeddedApp(app)
