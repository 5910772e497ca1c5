"""Prometheus metrics of the ingress, registered in a registry the gateway owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Socket receive → XADD acknowledged. Fine buckets: the benchmark reads p50/p99 from them.
LATENCY_BUCKETS_S = (
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    1.0,
)


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "callstream_ingress_connections", "Open call sockets", registry=registry
        )
        self.calls = Counter(
            "callstream_ingress_calls_total",
            "Calls accepted (AudioMetadata received)",
            registry=registry,
        )
        self.frames = Counter(
            "callstream_ingress_frames_total",
            "Audio frames accepted for publishing",
            registry=registry,
        )
        self.published = Counter(
            "callstream_ingress_entries_published_total",
            "Stream entries Redis acknowledged (frames, DTMF, lifecycle, events)",
            registry=registry,
        )
        self.publish_errors = Counter(
            "callstream_ingress_publish_errors_total",
            "Stream entries Redis did not accept",
            registry=registry,
        )
        self.rejects = Counter(
            "callstream_ingress_rejects_total",
            "Rejected messages and connections, by reason (see docs/protocol.md)",
            ["reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "callstream_ingest_latency_seconds",
            "Audio frame received on the socket → its XADD acknowledged by Redis "
            "(one frame in four is sampled)",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch = Histogram(
            "callstream_ingress_batch_entries",
            "Entries per pipelined flush",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
            registry=registry,
        )
        self.backlog = Gauge(
            "callstream_ingress_backlog_bytes",
            "Bytes of entries handed to the publisher and not yet acknowledged by Redis",
            registry=registry,
        )
        self.redis_up = Gauge(
            "callstream_ingress_redis_up",
            "1 when Redis answered the last health check (even to refuse its write)",
            registry=registry,
        )
        self.insights_trimmed_unacked = Counter(
            "callstream_insights_trimmed_unacknowledged_total",
            "Entries of cs:insights trimmed although a consumer group had not acknowledged them "
            "(the stream held CS_INSIGHTS_MAX_HELD entries)",
            registry=registry,
        )
        self.redis_writable = Gauge(
            "callstream_ingress_redis_writable",
            "1 when the gateway can publish: the last health check's write was accepted and "
            "no failure for every call was reported since (what /readyz reports)",
            registry=registry,
        )
