"""The Kafka bridge's pure parts: event families, records, settings from the environment."""

from __future__ import annotations

import json

import pytest

from callstream.shared.errors import ConfigError
from callstream.shared.events import Event
from callstream.workers.kafka import topics
from callstream.workers.kafka.config import KafkaConfig


@pytest.mark.parametrize(
    ("event_type", "family"),
    [
        ("transcript", topics.TRANSCRIPTS),
        ("speech.started", topics.TRANSCRIPTS),
        ("nlp.sentiment", topics.INSIGHTS),
        ("nlp.intent", topics.INSIGHTS),
        ("nlp.pii", topics.INSIGHTS),
        ("nlp.summary", topics.SUMMARIES),
        ("call.started", topics.LIFECYCLE),
        ("call.ended", topics.LIFECYCLE),
        ("transcribe.done", topics.LIFECYCLE),
        ("mykind.done", topics.LIFECYCLE),
        ("worker.failed", topics.LIFECYCLE),
        ("agent.turn", topics.AGENT),
        ("mykind.score", topics.OTHER),
    ],
)
def test_every_type_has_its_family(event_type: str, family: str) -> None:
    assert topics.family(event_type) == family
    assert family in topics.FAMILIES


def test_a_record_is_the_event_keyed_by_its_call_with_its_ids_in_headers() -> None:
    event = Event("c-1:nlp.sentiment:0:1200", "c-1", "nlp.sentiment", 1_741_944_416_852, {"a": 1})
    record = topics.to_record("acme", event, "1741944416900-3")
    assert record.topic == "acme.insights"
    assert record.key == b"c-1"
    assert Event.from_json(record.value) == event
    assert json.loads(record.value)["id"] == event.id
    assert dict(record.headers) == {
        "event-id": b"c-1:nlp.sentiment:0:1200",
        "event-type": b"nlp.sentiment",
        "schema-version": b"1",
        "redis-id": b"1741944416900-3",
    }
    assert record.timestamp_ms == event.time_ms


def test_settings_default_to_a_local_plaintext_broker() -> None:
    config = KafkaConfig.from_env({}, "cs")
    assert config.bootstrap == ("127.0.0.1:9092",)
    assert config.security_protocol == "PLAINTEXT"
    assert not config.uses_tls
    assert not config.uses_sasl
    assert config.topic_prefix == "cs"
    assert config.describe() == "127.0.0.1:9092 (PLAINTEXT)"


def test_event_hubs_settings() -> None:
    secret = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=x"
    config = KafkaConfig.from_env(
        {
            "KAFKA_BOOTSTRAP": "ns.servicebus.windows.net:9093",
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_USERNAME": "$ConnectionString",
            "KAFKA_SASL_PASSWORD": secret,
            "CS_KAFKA_TOPIC_PREFIX": "contoso.calls",
            "CS_KAFKA_PARTITIONS": "32",
            "CS_KAFKA_REPLICATION_FACTOR": "3",
        },
        "cs",
    )
    assert config.uses_tls
    assert config.uses_sasl
    assert config.sasl_mechanism == "PLAIN"
    assert (config.partitions, config.replication_factor) == (32, 3)
    assert config.topic_prefix == "contoso.calls"
    assert "SharedAccessKey" not in config.describe()
    assert config.describe() == (
        "ns.servicebus.windows.net:9093 (SASL_SSL, PLAIN as $ConnectionString)"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_BOOTSTRAP": "nohost"}, "is not host:port"),
        ({"KAFKA_BOOTSTRAP": "a:1,b:99999"}, "is not host:port"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM must be one of"),
        ({"CS_KAFKA_TOPIC_PREFIX": "a b"}, "CS_KAFKA_TOPIC_PREFIX must be"),
        ({"CS_KAFKA_PARTITIONS": "0"}, "CS_KAFKA_PARTITIONS must be positive, got 0"),
        ({"CS_KAFKA_PARTITIONS": "many"}, "CS_KAFKA_PARTITIONS must be an integer"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaConfig.from_env(env, "cs")


def test_several_brokers() -> None:
    config = KafkaConfig.from_env({"KAFKA_BOOTSTRAP": "k1:9092, k2:9092"}, "cs")
    assert config.bootstrap == ("k1:9092", "k2:9092")
