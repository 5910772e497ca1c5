"""Settings: one object built from the environment at the edge (the CLI) and passed down.

Library code never reads ``os.environ``; it receives a :class:`Settings`. Every variable is
documented in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from callstream.shared.errors import ConfigError
from callstream.shared.keys import Keys

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Bearer-JWT validation of the WebSocket upgrade, as ACS signs it (RS256)."""

    jwks_url: str | None = None
    jwks_file: str | None = None
    issuer: str | None = None
    audience: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.jwks_url or self.jwks_file)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, with the defaults of an embedded single-machine setup."""

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = "cs"
    auth: AuthSettings = field(default_factory=AuthSettings)
    max_message_bytes: int = 64 * 1024
    metadata_timeout_s: float = 10.0  # a socket silent this long after its upgrade is closed
    inbound_idle_timeout_s: float = 5.0  # a call that sends nothing this long is closed
    # On SIGTERM the gateway takes no new call and lets the live ones end, this long at most.
    drain_timeout_s: float = 30.0
    egress_max_buffer_s: float = 30.0  # audio egress reads ahead of playback, per call
    # A call socket that takes no audio this long (its client does not read) is closed, 1008.
    egress_stall_timeout_s: float = 10.0
    max_calls: int = 1000  # calls (sockets) one gateway process holds at once; 503 past it
    max_connections_per_address: int = 0  # sockets from one client address (0: no limit)
    max_messages_per_s: int = 250  # per call, sustained (ACS: 50 a second per participant, 4 max)
    max_participants: int = 64  # distinct participantRawIDs over one call (ACS: 4 at a time)
    call_lease_s: float = 15.0  # a call id stays taken this long after its gateway stopped renewing
    in_stream_maxlen: int = 30_000
    out_stream_maxlen: int = 30_000
    events_maxlen: int = 10_000
    # cs:insights keeps its newest insights_maxlen entries, and what a consumer group on it has
    # not acknowledged yet up to insights_max_held (callstream/bus/retention.py).
    insights_maxlen: int = 100_000
    insights_max_held: int = 1_000_000
    # cs:calls keeps a day: by age, not count, so no call still running loses its `started`
    # entry (workers own and fail calls over through it) however many calls start meanwhile.
    calls_retention_s: int = 86_400
    call_ttl_s: int = 3600
    flush_interval_ms: float = 2.0
    max_backlog_bytes: int = 64 * 1024 * 1024  # waiting for Redis: above it, new calls get 503
    worker_max_attempts: int = 5  # a call whose processing failed this often is given up
    # Calls that ended before a replica of the kind took them (a backlog, after an outage) are
    # served behind live calls, each at this many times real time (and costing as many live
    # calls' capacity); a replica holds at most worker_max_deferred of them waiting.
    worker_backlog_speed: float = 4.0
    worker_max_deferred: int = 1000
    call_idle_timeout_s: float = 60.0  # a worker ends a call whose inbound is silent this long
    # Inbound audio stays in Redis until every kind reading it has checkpointed past it, and
    # this much longer (seconds).
    audio_replay_margin_s: float = 5.0
    log_level: str = "INFO"
    # CS_REDACT=1: nothing on cs:insights carries unredacted text (docs/nlp.md#redaction-mode).
    redact: bool = False

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``env`` (normally ``os.environ``); raises ConfigError."""
        defaults = cls()
        auth = AuthSettings(
            jwks_url=env.get("CS_AUTH_JWKS_URL") or None,
            jwks_file=env.get("CS_AUTH_JWKS_FILE") or None,
            issuer=env.get("CS_AUTH_ISSUER") or None,
            audience=env.get("CS_AUTH_AUDIENCE") or None,
        )
        if auth.jwks_url and auth.jwks_file:
            raise ConfigError("set CS_AUTH_JWKS_URL or CS_AUTH_JWKS_FILE, not both")
        if auth.enabled and not (auth.issuer and auth.audience):
            raise ConfigError(
                "token validation needs CS_AUTH_ISSUER and CS_AUTH_AUDIENCE "
                "(for ACS: https://acscallautomation.communication.azure.com and your ACS "
                "resource id)"
            )
        return cls(
            redis_url=env.get("REDIS_URL") or defaults.redis_url,
            prefix=env.get("CS_PREFIX") or defaults.prefix,
            auth=auth,
            max_message_bytes=env_int(env, "CS_MAX_MESSAGE_BYTES", defaults.max_message_bytes),
            metadata_timeout_s=_float(env, "CS_METADATA_TIMEOUT_S", defaults.metadata_timeout_s),
            drain_timeout_s=_float(env, "CS_DRAIN_TIMEOUT_S", defaults.drain_timeout_s),
            inbound_idle_timeout_s=_float(
                env, "CS_INBOUND_IDLE_TIMEOUT_S", defaults.inbound_idle_timeout_s
            ),
            call_lease_s=_float(env, "CS_CALL_LEASE_S", defaults.call_lease_s),
            max_participants=env_int(env, "CS_MAX_PARTICIPANTS", defaults.max_participants),
            max_messages_per_s=env_int(env, "CS_MAX_MESSAGES_PER_S", defaults.max_messages_per_s),
            max_calls=env_int(env, "CS_MAX_CALLS", defaults.max_calls),
            egress_max_buffer_s=_float(env, "CS_EGRESS_MAX_BUFFER_S", defaults.egress_max_buffer_s),
            egress_stall_timeout_s=_float(
                env, "CS_EGRESS_STALL_TIMEOUT_S", defaults.egress_stall_timeout_s
            ),
            max_connections_per_address=env_int(
                env,
                "CS_MAX_CONNECTIONS_PER_ADDRESS",
                defaults.max_connections_per_address,
                allow_zero=True,
            ),
            in_stream_maxlen=env_int(env, "CS_IN_STREAM_MAXLEN", defaults.in_stream_maxlen),
            out_stream_maxlen=env_int(env, "CS_OUT_STREAM_MAXLEN", defaults.out_stream_maxlen),
            events_maxlen=env_int(env, "CS_EVENTS_MAXLEN", defaults.events_maxlen),
            insights_maxlen=env_int(env, "CS_INSIGHTS_MAXLEN", defaults.insights_maxlen),
            insights_max_held=env_int(env, "CS_INSIGHTS_MAX_HELD", defaults.insights_max_held),
            calls_retention_s=env_int(env, "CS_CALLS_RETENTION_S", defaults.calls_retention_s),
            call_ttl_s=env_int(env, "CS_CALL_TTL_S", defaults.call_ttl_s),
            flush_interval_ms=_float(env, "CS_FLUSH_INTERVAL_MS", defaults.flush_interval_ms),
            max_backlog_bytes=env_int(env, "CS_MAX_BACKLOG_BYTES", defaults.max_backlog_bytes),
            worker_max_attempts=env_int(
                env, "CS_WORKER_MAX_ATTEMPTS", defaults.worker_max_attempts
            ),
            worker_backlog_speed=_float(
                env, "CS_WORKER_BACKLOG_SPEED", defaults.worker_backlog_speed
            ),
            worker_max_deferred=env_int(
                env, "CS_WORKER_MAX_DEFERRED", defaults.worker_max_deferred
            ),
            call_idle_timeout_s=_float(env, "CS_CALL_IDLE_TIMEOUT_S", defaults.call_idle_timeout_s),
            audio_replay_margin_s=_float(
                env, "CS_AUDIO_REPLAY_MARGIN_S", defaults.audio_replay_margin_s
            ),
            log_level=(env.get("CS_LOG_LEVEL") or defaults.log_level).upper(),
            redact=_bool(env, "CS_REDACT", defaults.redact),
        )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")


def env_int(env: Mapping[str, str], name: str, default: int, *, allow_zero: bool = False) -> int:
    """A positive integer setting (or zero, with ``allow_zero``); ConfigError saying why not."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value
