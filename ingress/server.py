"""The gateway: ACS WebSocket endpoint, HTTP health and metrics, ingress to Redis, egress.

One socket is one call. Messages are parsed by the sans-I/O :class:`InboundSession`; frames are
published through the shared :class:`~callstream.bus.publisher.Publisher`; audio for the call is
played by the process's :class:`~egress.hub.EgressHub`. How each bad input is answered is tabled in
docs/protocol.md; every reject is counted in ``callstream_ingress_rejects_total{reason}``.

Readiness means that publishing works: every second the gateway writes a short-lived key (a
write Redis refuses when it refuses XADDs: out of memory, MISCONF, a read-only replica, ...),
and a failure the publisher reports for every call makes it unready until such a write succeeds
again. While unready, upgrades are refused with 503 and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from redis.exceptions import RedisError, ResponseError
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from callstream.bus.publisher import CONNECT_TIMEOUT_S, Publisher
from callstream.bus.retention import InsightsTrimmer
from callstream.bus.url import dead_connection_retry, parse_redis_url
from callstream.egress.hub import EgressHub
from callstream.ingress.auth import TokenValidator
from callstream.ingress.metrics import IngressMetrics
from callstream.shared.audio import Mode
from callstream.shared.channels import ChannelMap
from callstream.shared.entries import (
    CallEnded,
    CallStarted,
    Fields,
    InDtmf,
    InEnd,
    encode_call,
    encode_in,
)
from callstream.shared.errors import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    AuthError,
    ConfigError,
    ProtocolError,
    TooFast,
    TooManyParticipants,
    UnsupportedData,
)
from callstream.shared.events import CALL_ENDED, CALL_STARTED, DTMF, Event, parse_iso_ms
from callstream.shared.keys import incarnation_id, validate_call_id
from callstream.shared.protocols.acs import AudioData, AudioMetadata, DtmfData, InboundSession
from callstream.shared.ratelimit import TokenBucket
from callstream.shared.resp import FrameXadd
from callstream.shared.settings import Settings

log = logging.getLogger(__name__)

HEALTH_PERIOD_S = 1.0
# Labels a call platform may give a call in its URL's query (`/ws/{id}?tenant=contoso&queue=
# billing`): carried on call.started, for analytics per tenant and queue (the Kafka bridge).
CALL_LABELS = ("tenant", "queue")
LABEL_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
INSIGHTS_TRIM_PERIOD_S = 5.0  # cs:insights grows by at most this long's events past its cap
HEALTH_TIMEOUT_S = 2.0
HEALTH_KEY_TTL_MS = 5000  # the health check's key outlives a few checks, then goes
SKIP_LOG_EVERY = 100  # log the first skipped message of a call, then every 100th
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
# Leases of call ids (Lua: each compares the value first, so a gateway only renews or frees
# what is still its own). KEYS: lease keys; ARGV: their values, then the lease in ms. Returns
# the (1-based) positions of the leases found lost.
RENEW_LEASES = """
local lost = {}
local ttl = ARGV[#KEYS + 1]
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('PEXPIRE', key, ttl)
  else
    table.insert(lost, i)
  end
end
return lost
"""
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RATE_BURST_S = 2.0  # a call may send this many seconds' worth of messages at once
PENDING_LEASE_S = 10.0  # an upgrade whose handshake has not completed by then never will
EGRESS_WRITE_LIMIT = 64 * 1024  # bytes queued on a call's socket (~1.4 s of audio) at most
# The kernel's send buffer of a call socket (~1.5 s of audio; Linux doubles it): without a
# bound, autotuning lets a client that does not read absorb megabytes before egress notices.
# Audio needs 64 KB/s at most, which this sustains up to ~1 s of round-trip time.
CALL_SNDBUF = 64 * 1024


class SocketSink:
    """Egress's way into a call's socket (:class:`~callstream.egress.hub.Sink`).

    ``send`` uses websockets' ``broadcast``, which writes a message without awaiting (and
    skips a connection that is closing); the back-pressure ``broadcast`` leaves out is
    ``ready``: a socket with more than ``EGRESS_WRITE_LIMIT`` bytes not yet taken by the
    kernel (a client that does not read) gets no more until it drains; one that stays so for
    CS_EGRESS_STALL_TIMEOUT_S is ``stalled``: ``on_stall`` closes it.
    """

    __slots__ = ("_connection", "_on_stall")

    def __init__(self, connection: ServerConnection, on_stall: Callable[[float], None]) -> None:
        self._connection = connection
        self._on_stall = on_stall

    def ready(self) -> bool:
        return self._connection.transport.get_write_buffer_size() <= EGRESS_WRITE_LIMIT

    def send(self, message: str) -> None:
        broadcast([self._connection], message)

    def stalled(self, seconds: float) -> None:
        self._on_stall(seconds)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Route:
    """What the upgrade request asks for."""

    call_id: str
    mode: Mode | None
    labels: Mapping[str, str] = field(default_factory=dict)  # CALL_LABELS given in the query


def route(request: Request) -> Route:
    """Call id and mode of a ``/ws`` or ``/ws/{call_id}`` upgrade; raises ValueError."""
    parts = urlsplit(request.path)
    query = parse_qs(parts.query)
    path = parts.path.rstrip("/")
    if path == "/ws":
        call_id = (
            request.headers.get("x-ms-call-connection-id")
            or (query.get("callId") or [""])[0]
            or str(uuid.uuid4())
        )
    elif path.startswith("/ws/") and path.count("/") == 2:
        call_id = path[len("/ws/") :]
    else:
        raise LookupError(f"no such endpoint: {parts.path}")
    mode: Mode | None = None
    for value in query.get("mode", []):
        if value == "mixed":
            mode = "mixed"
        elif value == "unmixed":
            mode = "unmixed"
        else:
            raise ValueError(f"mode must be mixed or unmixed, got {value!r}")
    labels = {}
    for name in CALL_LABELS:
        for value in query.get(name, []):
            if not LABEL_VALUE.fullmatch(value):
                raise ValueError(
                    f"{name} must be 1-64 letters, digits and . _ : @ - (starting with a letter "
                    f"or digit), got {value!r}"
                )
            labels[name] = value
    return Route(validate_call_id(call_id), mode, labels)


@dataclass
class _Call:
    """State of one connected call."""

    call_id: str  # what it is published under: the route's id, or id~n for a reused one
    route_id: str  # the id the platform used (its lease's key)
    lease: str  # the lease's value: this connection's
    connection: ServerConnection
    mode: Mode | None
    connected_ms: int
    labels: Mapping[str, str] = field(default_factory=dict)  # tenant, queue: on call.started
    session: InboundSession = field(default_factory=InboundSession)
    channels: ChannelMap = field(default_factory=ChannelMap)
    attached: bool = False  # to egress, once AudioMetadata gave the format
    started: bool = False
    seq: int = 0
    skipped: int = 0
    heard_at: float = 0.0  # monotonic: the last message received
    participants: set[str] = field(default_factory=set)  # participantRawIDs seen
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(1, 1, 0.0))  # set at start
    closing: bool = False  # closed by the gateway (idle): not closed again
    failed: str | None = None  # why publishing failed, once it has
    in_key: str = ""  # cs:call:{id}:in, computed once
    frame_xadd: FrameXadd | None = None  # packs this call's frame XADDs
    metadata_timer: asyncio.TimerHandle | None = None  # closes a socket that never sends it


class Gateway:
    """The ACS-compatible gateway of one process (ingress + egress)."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_unauthenticated: bool = False,
        registry: CollectorRegistry | None = None,
        metrics_on_call_port: bool = True,
    ) -> None:
        """``metrics_on_call_port``: serve ``/metrics`` on the call port (False: the operator
        serves it elsewhere, :class:`~callstream.health.HealthServer`, and the call port
        answers 404)."""
        if not settings.auth.enabled and not allow_unauthenticated and not is_loopback(host):
            raise ConfigError(
                f"refusing to listen on {host} without authentication: configure token "
                "validation (CS_AUTH_JWKS_URL or CS_AUTH_JWKS_FILE, CS_AUTH_ISSUER, "
                "CS_AUTH_AUDIENCE) or pass --allow-unauthenticated"
            )
        self._metrics_on_call_port = metrics_on_call_port
        self._settings = settings
        self._redis_target = parse_redis_url(
            settings.redis_url, connect_timeout_s=CONNECT_TIMEOUT_S
        )
        self._keys = settings.keys
        self._host = host
        self._requested_port = port
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = IngressMetrics(self.registry)
        self._validator = TokenValidator(settings.auth) if settings.auth.enabled else None
        self._instance = f"{uuid.uuid4().hex[:8]}"
        self._health_key = f"{settings.prefix}:gateway:{self._instance}:health"
        self._insights_trimmer: InsightsTrimmer | None = None
        self._insights_trimmed_at = time.monotonic()
        self._insights_behind = ""  # groups holding cs:insights back, as last logged
        self._calls: dict[str, _Call] = {}  # by the id each is published under
        self._routes: dict[str, _Call] = {}  # by the id the platform used
        self._per_address: dict[str, int] = {}  # call sockets (and upgrades) by client address
        # Leases taken at the upgrade, for the connection's handler (its route, the lease's
        # value, the incarnation, when), and the route ids they hold. One whose handshake
        # never completed goes stale after PENDING_LEASE_S.
        self._pending: dict[ServerConnection, tuple[Route, str, int, float]] = {}
        self._pending_ids: dict[str, ServerConnection] = {}
        self._leasing = 0  # upgrades past the limits' checks, taking their lease
        self._draining = False  # SIGTERM: no new call, the live ones may end (drain)
        self._drained = asyncio.Event()  # set when draining and no call is left
        self._lease_renewed_at = 0.0
        self._closers: set[asyncio.Task[None]] = set()
        # Why calls cannot be published now ("" when they can): the last health check's
        # failure, or a failure for every call the publisher reported since.
        self._bus_error = "not checked yet"
        self._bus_failures = 0  # failures the publisher reported for every call, so far
        self._stack = contextlib.AsyncExitStack()
        self._server: Server | None = None
        self._redis: aioredis.Redis | None = None
        self._publisher: Publisher | None = None
        self._egress: EgressHub | None = None
        self._health: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the gateway is not running")
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def calls(self) -> int:
        """Calls (sockets) this gateway holds now."""
        return len(self._calls)

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"ws://{host}:{self.port}/ws"

    async def __aenter__(self) -> Gateway:
        try:
            # Egress and the health check: each bounds its own waits, so no per-read socket
            # timeout (redis-py would enter a timeout context for every reply otherwise).
            self._redis = aioredis.Redis.from_url(
                self._settings.redis_url,
                socket_timeout=None,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                # A pooled connection Redis closed (a restart) fails once: the command is sent
                # again on a new one (leases, egress, health checks are safe to repeat).
                retry=dead_connection_retry(),
            )
            self._stack.push_async_callback(self._redis.aclose)
            self._publisher = await self._stack.enter_async_context(
                Publisher(
                    self._redis_target,
                    self._metrics,
                    self._on_publish_failure,
                    on_bus_failure=self._on_bus_failure,
                    flush_interval_s=self._settings.flush_interval_ms / 1000,
                )
            )
            publisher = self._publisher
            self._metrics.backlog.set_function(lambda: publisher.backlog_bytes)
            self._egress = await self._stack.enter_async_context(
                EgressHub(self._redis, self._settings, registry=self.registry)
            )
            self._renew_script = self._redis.register_script(RENEW_LEASES)
            self._insights_trimmer = InsightsTrimmer(
                self._redis,
                self._keys.insights,
                self._settings.insights_maxlen,
                self._settings.insights_max_held,
            )
            self._release_script = self._redis.register_script(RELEASE_LEASE)
            await self._check_redis()
            self._health = asyncio.create_task(self._health_loop(), name="gateway-health")
            self._server = await serve(
                self._handle,
                self._host,
                self._requested_port,
                process_request=self._process_request,
                max_size=self._settings.max_message_bytes,
                compression=None,
                server_header="callstream",
            )
        except BaseException:
            await self._stack.aclose()
            raise
        if self._bus_error:
            log.error(
                "gateway listening on %s; not ready: Redis at %s unavailable: %s",
                self.url,
                self._redis_target.describe(),
                self._bus_error,
            )
        else:
            log.info(
                "gateway listening on %s (Redis at %s)", self.url, self._redis_target.describe()
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def drain(self, timeout_s: float) -> int:
        """Take no new call (``/readyz`` says ``draining``, upgrades get 503) and wait up to
        ``timeout_s`` for the live calls to end by themselves; returns how many are left (the
        close that follows ends them with 1001)."""
        self._draining = True
        if not self._calls:
            self._drained.set()
        log.info(
            "draining: %d calls, waiting up to %g s for them to end", len(self._calls), timeout_s
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._drained.wait()
        return len(self._calls)

    async def aclose(self) -> None:
        """Close every call with 1001 (publishing its end), flush, stop every task."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        await self._stack.aclose()

    async def serve_forever(self) -> None:
        if self._server is None:
            raise RuntimeError("the gateway is not running")
        await self._server.serve_forever()

    # ------------------------------------------------------------------ health

    async def _check_redis(self) -> None:
        """Write the health key: Redis answering is not enough, it must take writes (it refuses
        them when out of memory under ``noeviction``, after a failed RDB save, on a read-only
        replica, ...: then it refuses XADDs too)."""
        assert self._redis is not None
        failures = self._bus_failures
        answered, error = True, ""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self._redis.set(
                    self._health_key, int(time.time() * 1000), px=HEALTH_KEY_TTL_MS
                )
        except ResponseError as exc:  # Redis answered, and refused the write
            error = f"writes refused: {_reply_text(exc)}"
        except (RedisError, OSError, TimeoutError) as exc:
            answered, error = False, str(exc) or type(exc).__name__
        self._metrics.redis_up.set(1 if answered else 0)
        if not error and failures != self._bus_failures:
            return  # the publisher failed since this write was sent: not ready yet
        self._set_bus_error(error)

    def _set_bus_error(self, error: str) -> None:
        if error and not self._bus_error:
            log.error("Redis unavailable, refusing new calls: %s", error)
        elif not error and self._bus_error:
            log.info("Redis is available: accepting calls")
        self._bus_error = error
        self._metrics.redis_writable.set(0 if error else 1)

    def _on_bus_failure(self, error: str) -> None:
        """The publisher could not publish for any call (Redis unreachable, silent, refusing
        writes or the connection): unready until a health check's write succeeds."""
        self._bus_failures += 1
        self._set_bus_error(error)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PERIOD_S)
            self._close_quiet_calls()
            self._forget_stale_upgrades()
            await self._check_redis()
            if time.monotonic() - self._lease_renewed_at >= self._settings.call_lease_s / 3:
                await self._renew_leases()
            if time.monotonic() - self._insights_trimmed_at >= INSIGHTS_TRIM_PERIOD_S:
                await self._trim_insights()

    async def _trim_insights(self) -> None:
        """Trim cs:insights: writers add to it without trimming, so that the consumer groups
        reading it (the Kafka bridge, ...) are not trimmed past (bus/retention.py)."""
        assert self._insights_trimmer is not None
        self._insights_trimmed_at = time.monotonic()
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                trimmed = await self._insights_trimmer.trim()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not trim %s: %s", self._keys.insights, _reply_text(exc))
            return
        behind = ", ".join(f"{name} {n}" for name, n in sorted(trimmed.behind.items()))
        if trimmed.unacknowledged:
            self._metrics.insights_trimmed_unacked.inc(trimmed.unacknowledged)
            log.error(
                "%s held CS_INSIGHTS_MAX_HELD = %d entries: trimmed %d that consumer groups "
                "had not acknowledged (unacknowledged: %s)",
                self._keys.insights,
                self._settings.insights_max_held,
                trimmed.unacknowledged,
                behind,
            )
        elif behind != self._insights_behind:
            if behind:
                log.warning(
                    "%s: consumer groups behind, entries kept for them: %s",
                    self._keys.insights,
                    behind,
                )
            else:
                log.info("%s: every consumer group caught up", self._keys.insights)
        self._insights_behind = behind

    async def _renew_leases(self) -> None:
        """Keep this gateway's call ids taken (three renewals a lease). A lease found lost —
        this process stalled longer than CS_CALL_LEASE_S and another connection took the id —
        closes its call: one live connection per id, fleet-wide."""
        assert self._redis is not None
        self._lease_renewed_at = time.monotonic()
        calls = list(self._calls.values())
        if not calls:
            return
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                lost = await self._renew_script(
                    keys=[self._keys.lease(c.route_id) for c in calls],
                    args=[*(c.lease for c in calls), int(self._settings.call_lease_s * 1000)],
                )
        except (RedisError, OSError) as exc:
            log.warning("could not renew the calls' leases: %s", _reply_text(exc))
            return
        for index in lost:
            call = calls[int(index) - 1]
            if call.closing:
                continue
            call.closing = True
            self._metrics.rejects.labels("lease_lost").inc()
            log.error("call %s: its id was taken by another connection; closing", call.call_id)
            self._close(call, CLOSE_POLICY_VIOLATION, "call id taken by another connection")

    async def _release_lease(self, call: _Call) -> None:
        """Free the call id at the call's end (if it is still ours): the id may be used again
        (as a new call, ``id~n``). If Redis cannot be reached the lease expires by itself."""
        assert self._redis is not None
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self._release_script(
                    keys=[self._keys.lease(call.route_id)], args=[call.lease]
                )
        except (RedisError, OSError) as exc:
            log.warning("call %s: could not release its lease: %s", call.call_id, _reply_text(exc))

    def _forget_stale_upgrades(self) -> None:
        """Leases taken for upgrades whose handshake never completed (their leases in Redis
        expire by themselves)."""
        now = time.monotonic()
        for connection, (*_, since) in list(self._pending.items()):
            if now - since > PENDING_LEASE_S:
                self._forget_upgrade(connection)

    def _forget_upgrade(self, connection: ServerConnection) -> None:
        """An upgrade whose handshake did not complete in time: it holds no slot any more."""
        target = self._pending.pop(connection)[0]
        if self._pending_ids.get(target.call_id) is connection:
            del self._pending_ids[target.call_id]
        self._count_address(_address(connection), -1)

    def _count_address(self, address: str, change: int) -> None:
        left = self._per_address.get(address, 0) + change
        if left > 0:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)

    def _close_quiet_calls(self) -> None:
        """ACS sends a frame every 20 ms for the whole call (silent ones flagged): a call that
        has sent nothing for CS_INBOUND_IDLE_TIMEOUT_S since its AudioMetadata is dead or
        hostile. Close it (1008), so that it holds neither a socket nor a slot."""
        timeout_s = self._settings.inbound_idle_timeout_s
        if timeout_s <= 0:
            return
        now = time.monotonic()
        for call in list(self._calls.values()):
            if not call.attached or call.closing or now - call.heard_at <= timeout_s:
                continue
            call.closing = True
            self._metrics.rejects.labels("idle").inc()
            log.warning(
                "call %s: nothing received for %g s; closing with 1008", call.call_id, timeout_s
            )
            self._close(call, CLOSE_POLICY_VIOLATION, f"no message for {timeout_s:g} s")

    # ------------------------------------------------------------------ HTTP and upgrade

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): Redis takes writes, the gateway is not overloaded nor full."""
        if self._draining:
            return False, f"draining: {len(self._calls)} calls left"
        if self._bus_error:
            return False, f"Redis unavailable: {self._bus_error}"
        if overload := self._overloaded():
            return False, overload
        if full := self._full():
            return False, full
        return True, "ready"

    def _full(self) -> str:
        """Why the gateway takes no new call now ("" when it does): CS_MAX_CALLS sockets."""
        held = len(self._calls) + len(self._pending) + self._leasing
        if held < self._settings.max_calls:
            return ""
        return f"gateway full: {held} calls (CS_MAX_CALLS {self._settings.max_calls})"

    def _too_many_from(self, connection: ServerConnection) -> str:
        """Why a client address gets no more sockets ("" when it does)."""
        limit = self._settings.max_connections_per_address
        if not limit:
            return ""
        address = _address(connection)
        if self._per_address.get(address, 0) < limit:
            return ""
        return f"{limit} connections from {address} already (CS_MAX_CONNECTIONS_PER_ADDRESS)"

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            ready, why = self.readiness()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            return connection.respond(status, f"{why}\n")
        if path == "/metrics" and self._metrics_on_call_port:
            response = connection.respond(HTTPStatus.OK, generate_latest(self.registry).decode())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        try:
            target = route(request)
        except LookupError as exc:
            return connection.respond(HTTPStatus.NOT_FOUND, f"{exc}\n")
        except ValueError as exc:
            self._metrics.rejects.labels("bad_request").inc()
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return connection.respond(
                HTTPStatus.UPGRADE_REQUIRED,
                "this endpoint speaks WebSocket (ACS audio streaming)\n",
            )
        if self._validator is not None:
            try:
                await self._validator.validate(request.headers.get("Authorization"))
            except AuthError as exc:
                self._metrics.rejects.labels("unauthenticated").inc()
                log.warning("refused upgrade for call %s: %s", target.call_id, exc)
                return _unauthorized(connection, str(exc))
        waiting = self._pending_ids.get(target.call_id)
        if waiting is not None and time.monotonic() - self._pending[waiting][3] > PENDING_LEASE_S:
            self._forget_upgrade(waiting)  # its handshake never completed
            waiting = None
        if target.call_id in self._routes or waiting is not None:
            return self._duplicate(connection, target.call_id)
        if self._draining:
            self._metrics.rejects.labels("draining").inc()
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, "gateway draining: connect to another\n"
            )
        if self._bus_error:  # the call could not be published: say so before it starts
            self._metrics.rejects.labels("bus_unavailable").inc()
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, f"event bus unavailable: {self._bus_error}\n"
            )
        if overload := self._overloaded():  # more would only grow memory: protect the calls
            self._metrics.rejects.labels("overloaded").inc()
            log.warning("refused call %s: %s", target.call_id, overload)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{overload}\n")
        if full := self._full():
            self._metrics.rejects.labels("full").inc()
            log.warning("refused call %s: %s", target.call_id, full)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{full}\n")
        if crowded := self._too_many_from(connection):
            self._metrics.rejects.labels("too_many_connections").inc()
            log.warning("refused call %s: %s", target.call_id, crowded)
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, f"{crowded}\n")
        # The limits count this upgrade from now on: others arriving while its lease is taken
        # (an await) see it, so a burst of upgrades cannot pass them together.
        address = _address(connection)
        self._count_address(address, +1)
        self._leasing += 1
        try:
            lease = await self._take_lease(target.call_id)
        except (RedisError, OSError) as exc:
            self._count_address(address, -1)
            self._metrics.rejects.labels("bus_unavailable").inc()
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, f"event bus unavailable: {_reply_text(exc)}\n"
            )
        finally:
            self._leasing -= 1
        if lease is None:
            self._count_address(address, -1)
            return self._duplicate(connection, target.call_id)
        self._pending[connection] = (target, *lease, time.monotonic())
        self._pending_ids[target.call_id] = connection
        return None

    def _duplicate(self, connection: ServerConnection, call_id: str) -> Response:
        self._metrics.rejects.labels("duplicate_call").inc()
        log.warning("refused call %s: it is connected already", call_id)
        return connection.respond(
            HTTPStatus.CONFLICT,
            f"call {call_id} is already connected (to this or another gateway)\n",
        )

    async def _take_lease(self, call_id: str) -> tuple[str, int] | None:
        """Hold ``call_id`` for this connection, fleet-wide: (lease value, incarnation), or None
        when a live connection holds it (on any gateway). The n-th connection to use the id
        is its incarnation n (``call_id~n``): a new call, whose consumers never see the
        entries of the one that used the id before."""
        assert self._redis is not None
        value = f"{self._instance}:{uuid.uuid4().hex}"
        lease_ms = int(self._settings.call_lease_s * 1000)
        if not await self._redis.set(self._keys.lease(call_id), value, nx=True, px=lease_ms):
            return None
        counter = self._keys.incarnations(call_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(counter)
            pipe.expire(counter, self._settings.calls_retention_s)
            incarnation, _ = await pipe.execute()
        return value, int(incarnation)

    def _overloaded(self) -> str:
        """Why the gateway takes no new call now ("" when it does): too much is waiting for
        Redis (a slow Redis, or more calls than it absorbs)."""
        assert self._publisher is not None
        waiting = self._publisher.backlog_bytes
        if waiting <= self._settings.max_backlog_bytes:
            return ""
        return (
            f"gateway overloaded: {waiting / 2**20:.1f} MiB waiting for Redis "
            f"(limit {self._settings.max_backlog_bytes / 2**20:.1f} MiB)"
        )

    # ------------------------------------------------------------------ one call

    async def _handle(self, connection: ServerConnection) -> None:
        pending = self._pending.pop(connection, None)
        if pending is None:  # its lease went stale before the handshake completed
            self._metrics.rejects.labels("duplicate_call").inc()
            await connection.close(1008, "the upgrade took too long; connect again")
            return
        target, value, incarnation, _ = pending
        if self._pending_ids.get(target.call_id) is connection:
            del self._pending_ids[target.call_id]
        call = _Call(
            incarnation_id(target.call_id, incarnation),
            target.call_id,
            value,
            connection,
            target.mode,
            int(time.time() * 1000),
            target.labels,
        )
        call.in_key = self._keys.call_in(call.call_id)
        call.frame_xadd = FrameXadd(call.in_key, self._settings.in_stream_maxlen)
        rate = self._settings.max_messages_per_s
        call.bucket = TokenBucket(rate, RATE_BURST_S * rate, time.monotonic())
        self._calls[call.call_id] = call
        self._routes[call.route_id] = call
        address = _address(connection)  # counted in _per_address since its upgrade
        self._metrics.connections.inc()
        if self._settings.metadata_timeout_s > 0:
            call.metadata_timer = asyncio.get_running_loop().call_later(
                self._settings.metadata_timeout_s, self._no_metadata, call
            )
        reason = "normal"
        try:
            reason = await self._receive(call)
        finally:
            if call.metadata_timer is not None:
                call.metadata_timer.cancel()
            self._metrics.connections.dec()
            await self._end(call, reason)
            del self._calls[call.call_id]
            del self._routes[call.route_id]
            self._count_address(address, -1)
            await self._release_lease(call)
            if self._draining and not self._calls:
                self._drained.set()

    async def _receive(self, call: _Call) -> str:
        """Read the call's messages until the socket closes; returns why it ended."""
        connection = call.connection
        monotonic = time.monotonic
        try:
            take = call.bucket.take
            async for message in connection:
                received_at = call.heard_at = monotonic()
                if not take(received_at):
                    return await self._reject(call, self._too_fast())
                if isinstance(message, bytes):
                    error: ProtocolError = UnsupportedData(
                        f"expected text messages of JSON, got a binary message of "
                        f"{len(message)} bytes"
                    )
                    return await self._reject(call, error)
                try:
                    parsed = call.session.receive(message)
                except ProtocolError as exc:
                    if exc.fatal:
                        return await self._reject(call, exc)
                    self._skip(call, exc)
                    continue
                if isinstance(parsed, AudioData):
                    participant = parsed.participant_raw_id
                    if participant and participant not in call.participants:
                        if len(call.participants) >= self._settings.max_participants:
                            return await self._reject(call, self._too_many())
                        call.participants.add(participant)
                    self._publish_frame(call, parsed, received_at)
                elif isinstance(parsed, DtmfData):
                    self._publish_dtmf(call, parsed)
                elif isinstance(parsed, AudioMetadata):
                    self._on_metadata(call, parsed)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CLOSE_MESSAGE_TOO_BIG:
                self._metrics.rejects.labels("oversize").inc()
                log.warning(
                    "call %s: closed 1009: message over %d bytes",
                    call.call_id,
                    self._settings.max_message_bytes,
                )
                return "oversize"
            return "closed"
        if call.failed is not None:
            return "bus_unavailable"
        code = connection.close_code
        return "normal" if code in (1000, 1001, None) else f"closed_{code}"

    def _too_fast(self) -> TooFast:
        rate = self._settings.max_messages_per_s
        return TooFast(f"more than {rate} messages a second (CS_MAX_MESSAGES_PER_S)")

    def _too_many(self) -> TooManyParticipants:
        limit = self._settings.max_participants
        return TooManyParticipants(
            f"more than {limit} participants in one call (CS_MAX_PARTICIPANTS)"
        )

    async def _reject(self, call: _Call, error: ProtocolError) -> str:
        call.closing = True  # the idle check must not close (and count) it a second time
        self._metrics.rejects.labels(error.kind).inc()
        log.warning("call %s: closing with %d: %s", call.call_id, error.close_code, error)
        connection = call.connection
        closing = asyncio.create_task(connection.close(error.close_code, error.reason))
        # Read (and drop) what the client sent after the message refused: websockets stops
        # reading a connection whose unread messages pile up, and would then never see the
        # client's answer to our close (it would wait its close timeout, 10 s).
        with contextlib.suppress(ConnectionClosed):
            async for _ in connection:
                pass
        await closing
        return error.kind

    def _skip(self, call: _Call, error: ProtocolError) -> None:
        self._metrics.rejects.labels(error.kind).inc()
        if call.skipped % SKIP_LOG_EVERY == 0:
            log.warning(
                "call %s: skipped a message (%d so far): %s", call.call_id, call.skipped + 1, error
            )
        call.skipped += 1

    def _on_metadata(self, call: _Call, metadata: AudioMetadata) -> None:
        assert self._egress is not None
        if call.attached:
            return  # a repeated, identical AudioMetadata
        if call.metadata_timer is not None:
            call.metadata_timer.cancel()
            call.metadata_timer = None
        self._metrics.calls.inc()
        call.heard_at = time.monotonic()
        sock = call.connection.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CALL_SNDBUF)
        self._egress.attach(
            call.call_id,
            metadata.format,
            SocketSink(call.connection, functools.partial(self._on_stalled, call)),
            start_id=f"{call.connected_ms}-0",
        )
        call.attached = True
        log.info(
            "call %s: %d Hz%s",
            call.call_id,
            metadata.sample_rate,
            f", {call.mode}" if call.mode else "",
        )
        # The call is published (and a worker may take it) at its first frame, not here: a
        # socket that never sends audio holds no worker's capacity.

    def _publish_started(self, call: _Call) -> None:
        metadata = call.session.metadata
        assert metadata is not None
        assert call.mode is not None
        assert self._publisher is not None
        now_ms = int(time.time() * 1000)
        started = CallStarted(call.call_id, metadata.sample_rate, call.mode, now_ms, self._instance)
        self._publish_call_entry(call, encode_call(started), now_ms)
        self._publish_event(
            call,
            Event(
                f"{call.call_id}:started",
                call.call_id,
                CALL_STARTED,
                now_ms,
                {"rate_hz": metadata.sample_rate, "mode": call.mode, **call.labels},
            ),
        )
        call.started = True

    def _publish_call_entry(self, call: _Call, fields: Fields, now_ms: int) -> None:
        """A `started` or `ended` entry in cs:calls, dropping those older than the retention."""
        assert self._publisher is not None
        oldest_ms = now_ms - self._settings.calls_retention_s * 1000
        self._publisher.xadd_retained(call.call_id, self._keys.calls, fields, oldest_ms)

    def _publish_event(self, call: _Call, event: Event) -> None:
        assert self._publisher is not None
        fields = event.fields()
        self._publisher.xadd(
            call.call_id, self._keys.call_events(call.call_id), fields, self._settings.events_maxlen
        )
        if self._settings.redact and event.type == DTMF:
            return  # keys pressed may be a card number or a PIN: the call's own stream only
        # Trimmed by _trim_insights, around its consumer groups.
        self._publisher.xadd(call.call_id, self._keys.insights, fields, None)

    def _publish_frame(self, call: _Call, frame: AudioData, received_at: float) -> None:
        assert self._publisher is not None
        if call.failed is not None:
            return  # being closed with 1011: frames that arrive meanwhile are not published
        participant = frame.participant_raw_id or ""
        if not call.started:
            if call.mode is None:
                call.mode = "unmixed" if participant else "mixed"
            self._publish_started(call)
        channel = call.channels.channel(participant) if call.mode == "unmixed" else 0
        ts_ms = parse_iso_ms(frame.timestamp) if frame.timestamp else None
        assert call.frame_xadd is not None
        command = call.frame_xadd.pack(
            call.seq,
            ts_ms if ts_ms is not None else int(time.time() * 1000),
            participant.encode(),
            channel,
            frame.silent,
            frame.pcm,
        )
        call.seq += 1
        self._publisher.publish(call.call_id, command, received_at)

    def _publish_dtmf(self, call: _Call, dtmf: DtmfData) -> None:
        assert self._publisher is not None
        if not call.started:
            call.mode = call.mode or "mixed"
            self._publish_started(call)
        ts_ms = (parse_iso_ms(dtmf.timestamp) if dtmf.timestamp else None) or int(
            time.time() * 1000
        )
        participant = dtmf.participant_raw_id or ""
        entry = InDtmf(call.seq, ts_ms, participant, dtmf.tone)
        self._publisher.xadd(
            call.call_id,
            self._keys.call_in(call.call_id),
            encode_in(entry),
            self._settings.in_stream_maxlen,
        )
        self._publish_event(
            call,
            Event(
                f"{call.call_id}:dtmf:{call.seq}",
                call.call_id,
                DTMF,
                ts_ms,
                {"tone": dtmf.tone, "participant": participant},
            ),
        )
        call.seq += 1

    async def _end(self, call: _Call, reason: str) -> None:
        assert self._egress is not None
        assert self._publisher is not None
        if call.attached:
            call.attached = False
            await self._egress.detach(call.call_id)
        if not call.started:
            return  # it sent no audio and no tone: it never became a call, nothing was published
        now_ms = int(time.time() * 1000)
        publisher = self._publisher
        publisher.xadd(
            call.call_id,
            self._keys.call_in(call.call_id),
            encode_in(InEnd(reason)),
            self._settings.in_stream_maxlen,
        )
        self._publish_call_entry(call, encode_call(CallEnded(call.call_id, now_ms, reason)), now_ms)
        self._publish_event(
            call,
            Event(
                f"{call.call_id}:ended",
                call.call_id,
                CALL_ENDED,
                now_ms,
                {"reason": reason, "frames": call.seq},
            ),
        )
        for key in self._keys.call_keys(call.call_id):
            publisher.expire(call.call_id, key, self._settings.call_ttl_s)
        log.info("call %s: ended (%s) after %d entries", call.call_id, reason, call.seq)

    # ------------------------------------------------------------------ failures

    def _no_metadata(self, call: _Call) -> None:
        """A socket that has sent no AudioMetadata since its upgrade (ACS sends it first, at
        once) holds a connection for nothing: close it. (AudioMetadata cancels this.)"""
        call.metadata_timer = None
        self._metrics.rejects.labels("no_metadata").inc()
        timeout = self._settings.metadata_timeout_s
        log.warning(
            "call %s: no AudioMetadata within %g s; closing with 1008", call.call_id, timeout
        )
        self._close(call, CLOSE_POLICY_VIOLATION, f"expected AudioMetadata within {timeout:g} s")

    def _on_stalled(self, call: _Call, seconds: float) -> None:
        """Its client has taken no audio for CS_EGRESS_STALL_TIMEOUT_S (it does not read, or
        reads slower than real time): audio for it would only pile up here."""
        if call.closing:
            return
        call.closing = True
        self._metrics.rejects.labels("not_reading").inc()
        log.warning(
            "call %s: its client took no audio for %.0f s (CS_EGRESS_STALL_TIMEOUT_S); "
            "closing with 1008",
            call.call_id,
            seconds,
        )
        self._close(call, CLOSE_POLICY_VIOLATION, "not reading")

    def _on_publish_failure(self, call_id: str, error: str, bus_wide: bool) -> None:
        call = self._calls.get(call_id)
        if call is None or call.failed is not None:
            return
        call.failed = error
        self._metrics.rejects.labels("bus_unavailable").inc()
        self._close(call, CLOSE_INTERNAL_ERROR, f"event bus unavailable: {error}"[:120])

    def _close(self, call: _Call, code: int, reason: str) -> None:
        """Close a call's socket from a callback (the task is kept until it is done)."""
        closer = asyncio.create_task(call.connection.close(code, reason))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)


def _address(connection: ServerConnection) -> str:
    """The client's address (its IP; behind a load balancer, the balancer's)."""
    remote = connection.remote_address
    return str(remote[0]) if remote else "?"


def _reply_text(exc: RedisError | OSError) -> str:
    """An error reply as Redis wrote it (redis-py moves the leading code, e.g. ``OOM``, out of
    the message of the exceptions it maps it to); a connection error as it says."""
    code = getattr(exc, "status_code", None)
    text = str(exc) or type(exc).__name__
    return f"{code} {text}" if code else text


def _unauthorized(connection: ServerConnection, message: str) -> Response:
    response = connection.respond(HTTPStatus.UNAUTHORIZED, f"{message}\n")
    response.headers["WWW-Authenticate"] = 'Bearer realm="callstream"'
    return response
