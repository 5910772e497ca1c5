"""The Kafka bridge's settings, from the environment (pure: no connection is made here).

``KAFKA_BOOTSTRAP`` (``127.0.0.1:9092``; ``host:port[,host:port…]``), ``KAFKA_SECURITY_PROTOCOL``
(``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``), ``KAFKA_SASL_MECHANISM`` (``PLAIN``,
``SCRAM-SHA-256``, ``SCRAM-SHA-512``), ``KAFKA_SASL_USERNAME`` and ``KAFKA_SASL_PASSWORD``
(Event Hubs: ``$ConnectionString`` and the namespace's connection string), ``KAFKA_SSL_CAFILE``
(the system's CAs by default), ``CS_KAFKA_TOPIC_PREFIX`` (``CS_PREFIX``: topics
``{prefix}.transcripts``, …), ``CS_KAFKA_PARTITIONS`` (6) and ``CS_KAFKA_REPLICATION_FACTOR`` (1)
of the topics the bridge creates, ``CS_KAFKA_SESSION_TIMEOUT_S`` (30) of the Faust app's consumer
group. docs/kafka.md has examples for Kafka, Redpanda and Event Hubs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from callstream.shared.errors import ConfigError
from callstream.shared.settings import env_int

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: tuple[str, ...] = (DEFAULT_BOOTSTRAP,)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str | None = None
    topic_prefix: str = "cs"
    partitions: int = 6
    replication_factor: int = 1
    # The Faust app's consumer group session: a replica that dies is replaced after this long.
    session_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], cs_prefix: str = "cs") -> KafkaConfig:
        bootstrap = tuple(
            part.strip() for part in env.get("KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP).split(",")
        )
        for address in bootstrap:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"KAFKA_BOOTSTRAP: {address!r} is not host:port")
        protocol = env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                f"got {protocol!r}"
            )
        mechanism = env.get("KAFKA_SASL_MECHANISM", "PLAIN").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, "
                f"got {mechanism!r}"
            )
        username = env.get("KAFKA_SASL_USERNAME", "")
        password = env.get("KAFKA_SASL_PASSWORD", "")
        if protocol.startswith("SASL_") and not (username and password):
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD (Event Hubs: $ConnectionString and the connection string)"
            )
        prefix = env.get("CS_KAFKA_TOPIC_PREFIX", cs_prefix)
        if not prefix or any(not (c.isalnum() or c in "._-") for c in prefix):
            raise ConfigError(
                f"CS_KAFKA_TOPIC_PREFIX must be letters, digits, '.', '_', '-', got {prefix!r}"
            )
        return cls(
            bootstrap=bootstrap,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=username,
            sasl_password=password,
            ssl_cafile=env.get("KAFKA_SSL_CAFILE") or None,
            topic_prefix=prefix,
            partitions=env_int(env, "CS_KAFKA_PARTITIONS", 6),
            replication_factor=env_int(env, "CS_KAFKA_REPLICATION_FACTOR", 1),
            session_timeout_s=env_int(env, "CS_KAFKA_SESSION_TIMEOUT_S", 30),
        )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def describe(self) -> str:
        """Where, and how, without the password (for logs)."""
        auth = f", {self.sasl_mechanism} as {self.sasl_username}" if self.uses_sasl else ""
        return f"{','.join(self.bootstrap)} ({self.security_protocol}{auth})"
