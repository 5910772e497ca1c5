"""The egress of one gateway process: out streams → paced ``AudioData`` on the call sockets.

One reader task serves every attached call with a single ``XREAD BLOCK`` over all their out
streams (one Redis connection, not one per call). What it reads goes into each call's
:class:`~egress.playout.Playout`, and what is due is sent at once; what is due later is sent by
a timer callback of that call (``loop.call_at``). Nothing here waits on a socket: a
:class:`Sink` queues a message on its socket without waiting, and says when its socket has too
much queued already (a client that does not read): then that call's playback waits, and only
that call's. No task per call, no wake-up of one per frame. Nothing else writes audio to a
call's socket.

Egress is the only reader of a call's out stream, and what it has read is in its playout
buffer: about once a second it trims what it has read from Redis (``XTRIM … MINID``), so a
live call's out stream holds only what is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError

from callstream.bus.reader import StreamReader, fields
from callstream.egress.playout import MarkReached, Playout, SendFrame, SendStop
from callstream.shared.audio import FRAME_MS, AudioFormat
from callstream.shared.entries import EntryError, decode_out
from callstream.shared.errors import BusError
from callstream.shared.events import PLAYBACK_MARK, Event
from callstream.shared.protocols.acs import build_audio_data, build_stop_audio
from callstream.shared.settings import Settings

log = logging.getLogger(__name__)


class Sink(Protocol):
    """A call's socket, as egress writes to it."""

    def ready(self) -> bool:
        """Whether the socket takes more now (false while its write buffer is long)."""

    def send(self, message: str) -> None:
        """Queue a text message on the socket without waiting (dropped if it has closed)."""

    def stalled(self, seconds: float) -> None:
        """The socket has taken nothing for ``seconds`` (its client does not read): close it.
        Egress has let the call go."""


EGRESS_CLIENT_NAME = "callstream-gateway-egress"
READ_BLOCK_MS = 100  # bound on how long a newly attached call waits to join the shared read
# The shared read runs at most this often: with many calls, some entry arrives almost every
# millisecond, and reading at once each time costs an XREAD of every stream for a few entries.
# Audio is queued ~100 ms ahead of playback, so a few ms here cost no gap.
READ_INTERVAL_S = 0.005
READ_COUNT = 200  # entries per stream per read
MAX_BACKOFF_S = 2.0
READ_TIMEOUT_S = READ_BLOCK_MS / 1000 + 5.0  # a read Redis has not answered by then failed
TRIM_PERIOD_S = 1.0  # how often what egress has read is trimmed from the out streams
CONGESTED_RETRY_S = FRAME_MS / 1000  # a socket that took no more is tried again this soon


class EgressMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames = Counter(
            "callstream_egress_frames_sent_total", "20 ms frames sent to calls", registry=registry
        )
        self.stops = Counter(
            "callstream_egress_stops_sent_total", "StopAudio messages sent", registry=registry
        )
        self.marks = Counter(
            "callstream_egress_marks_reached_total", "Playback marks reached", registry=registry
        )
        self.restarts = Counter(
            "callstream_egress_schedule_restarts_total",
            "Times audio resumed after the playout schedule had fallen behind the clock",
            registry=registry,
        )
        self.send_failures = Counter(
            "callstream_egress_send_failures_total",
            "Sends that failed; the call was detached",
            registry=registry,
        )
        self.bad_entries = Counter(
            "callstream_egress_bad_entries_total", "Out-stream entries skipped", registry=registry
        )
        self.redis_errors = Counter(
            "callstream_egress_redis_errors_total", "Failed out-stream reads", registry=registry
        )
        self.stalls = Counter(
            "callstream_egress_stalled_sockets_total",
            "Call sockets closed because their client took no audio for CS_EGRESS_STALL_TIMEOUT_S",
            registry=registry,
        )
        self.late = Histogram(
            "callstream_egress_wake_lateness_seconds",
            "How late egress's timer fired for a scheduled send",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
            registry=registry,
        )
        self.calls = Gauge("callstream_egress_calls", "Calls attached to egress", registry=registry)
        self.held = Counter(
            "callstream_egress_reads_held_total",
            "Times a call's out stream was not read: its playout buffer was full "
            "(CS_EGRESS_MAX_BUFFER_S)",
            registry=registry,
        )


@dataclass(eq=False)
class _Call:
    call_id: str
    key: str
    sink: Sink
    playout: Playout
    last_id: str
    trimmed_to: str = ""  # the out stream has nothing before this id any more
    marks: int = 0
    restarts: int = 0  # the playout's restarts already counted
    timer: asyncio.TimerHandle | None = None
    congested_at: float | None = None  # loop time: since then its socket took nothing more


class EgressHub:
    """Paced playback for every call of one gateway process."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        lead_ms: float = 100.0,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = settings.keys
        self._lead_s = lead_ms / 1000
        self._max_backlog = max(1, int(settings.egress_max_buffer_s * 1000 / FRAME_MS))
        self._metrics = EgressMetrics(registry if registry is not None else CollectorRegistry())
        self._calls: dict[str, _Call] = {}
        self._by_key: dict[bytes, _Call] = {}
        self._attached = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()  # marks on their way to Redis
        self._loop = asyncio.get_running_loop()
        # Out streams are read on a connection of egress's own, its replies parsed by hiredis
        # (callstream.bus.reader); marks and trims go through ``redis``.
        self._xread = StreamReader(settings.redis_url, client_name=EGRESS_CLIENT_NAME)

    @property
    def attached(self) -> int:
        return len(self._calls)

    async def __aenter__(self) -> EgressHub:
        self._reader = asyncio.create_task(self._read_loop(), name="egress-reader")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Detach every call and stop the reader; every task is awaited."""
        for call_id in list(self._calls):
            await self.detach(call_id)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
        await self._xread.aclose()

    def attach(self, call_id: str, fmt: AudioFormat, sink: Sink, *, start_id: str) -> None:
        """Start playing ``call_id``'s out stream into ``sink``, from entries after
        ``start_id``."""
        if call_id in self._calls:
            raise ValueError(f"call {call_id} is already attached to egress")
        key = self._keys.call_out(call_id)
        call = _Call(
            call_id=call_id,
            key=key,
            sink=sink,
            playout=Playout(fmt.frame_bytes, frame_s=FRAME_MS / 1000, lead_s=self._lead_s),
            last_id=start_id,
        )
        self._calls[call_id] = call
        self._by_key[key.encode()] = call
        self._metrics.calls.set(len(self._calls))
        self._attached.set()

    async def detach(self, call_id: str) -> None:
        """Stop reading and sending for ``call_id``; idempotent."""
        self._drop(call_id)

    def _drop(self, call_id: str) -> None:
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        self._by_key.pop(call.key.encode(), None)
        self._metrics.calls.set(len(self._calls))
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff_s = 0.1
        trim_at = loop.time() + TRIM_PERIOD_S
        while True:
            if loop.time() >= trim_at:
                trim_at = loop.time() + TRIM_PERIOD_S
                await self._trim()
            if not self._calls:
                self._attached.clear()
                await self._attached.wait()
                continue
            # A call whose playout buffer holds CS_EGRESS_MAX_BUFFER_S already is not read: what
            # a worker queued beyond that (a long synthesised answer) waits in Redis, not in
            # this process's memory.
            streams: dict[str, str] = {}
            for c in self._calls.values():
                if c.playout.backlog < self._max_backlog:
                    streams[c.key] = c.last_id
                else:
                    self._metrics.held.inc()
            if not streams:
                await asyncio.sleep(READ_INTERVAL_S)
                continue
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    reply = await self._xread.xread(
                        streams, count=READ_COUNT, block_ms=READ_BLOCK_MS
                    )
            except (BusError, OSError) as exc:
                self._metrics.redis_errors.inc()
                log.warning(
                    "egress: reading out streams failed (%s); retrying in %.1f s", exc, backoff_s
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(MAX_BACKOFF_S, backoff_s * 2)
                continue
            backoff_s = 0.1
            now = loop.time()
            for key, entries in reply:
                call = self._by_key.get(key)
                if call is None:  # detached while we were reading
                    continue
                for entry_id, flat in entries:
                    call.last_id = entry_id.decode()
                    try:
                        call.playout.push(decode_out(fields(flat)), now)
                    except EntryError as exc:
                        self._metrics.bad_entries.inc()
                        log.warning(
                            "call %s: skipped out-stream entry %s: %s",
                            call.call_id,
                            call.last_id,
                            exc,
                        )
                self._service(call)
            await asyncio.sleep(READ_INTERVAL_S)

    async def _trim(self) -> None:
        """Drop from each out stream what has been read (it waits in the playout buffer)."""
        stale = [c for c in self._calls.values() if c.last_id != c.trimmed_to and c.last_id]
        if not stale:
            return
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for call in stale:
                        pipe.xtrim(call.key, minid=call.last_id, approximate=True)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.redis_errors.inc()
            log.warning("egress: trimming out streams failed (%s)", exc)
            return
        for call in stale:
            call.trimmed_to = call.last_id

    # ------------------------------------------------------------------ playing

    def _service(self, call: _Call) -> None:
        """Send what is due now, and set the call's timer for what is due next."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        now = self._loop.time()
        try:
            if not call.sink.ready():
                # Its client reads slower than real time: hold the audio (the schedule falls
                # behind, and restarts when the socket drains), and look again soon; a client
                # that takes nothing for CS_EGRESS_STALL_TIMEOUT_S is let go.
                if call.congested_at is None:
                    call.congested_at = now
                elif now - call.congested_at > self._settings.egress_stall_timeout_s:
                    self._metrics.stalls.inc()
                    self._drop(call.call_id)
                    call.sink.stalled(now - call.congested_at)
                    return
                call.timer = self._loop.call_at(
                    now + CONGESTED_RETRY_S, self._on_timer, call, now + CONGESTED_RETRY_S
                )
                return
            call.congested_at = None
            playout = call.playout
            for action in playout.due(now):
                if isinstance(action, SendFrame):
                    call.sink.send(build_audio_data(action.pcm))
                    self._metrics.frames.inc()
                elif isinstance(action, SendStop):
                    call.sink.send(build_stop_audio())
                    self._metrics.stops.inc()
                elif isinstance(action, MarkReached):
                    self._spawn_mark(call, action.name)
            if playout.restarts != call.restarts:
                self._metrics.restarts.inc(playout.restarts - call.restarts)
                call.restarts = playout.restarts
            wake = playout.next_wakeup(now)
            if wake is not None:
                call.timer = self._loop.call_at(wake, self._on_timer, call, wake)
        except Exception as exc:  # a dead socket or anything else: this call only
            self._metrics.send_failures.inc()
            log.info("call %s: egress stopped: %s", call.call_id, exc)
            self._drop(call.call_id)

    def _on_timer(self, call: _Call, due_s: float) -> None:
        call.timer = None
        if self._calls.get(call.call_id) is not call:
            return  # detached meanwhile
        self._metrics.late.observe(max(0.0, self._loop.time() - due_s))
        self._service(call)

    def _spawn_mark(self, call: _Call, name: str) -> None:
        task = asyncio.create_task(self._publish_mark(call, name), name=f"mark-{call.call_id}")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish_mark(self, call: _Call, name: str) -> None:
        event = Event(
            id=f"{call.call_id}:mark:{name}:{call.marks}",
            call_id=call.call_id,
            type=PLAYBACK_MARK,
            time_ms=int(time.time() * 1000),
            data={"name": name},
        )
        call.marks += 1
        fields = event.fields()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    self._keys.call_events(call.call_id),
                    fields,
                    maxlen=self._settings.events_maxlen,
                    approximate=True,
                )
                pipe.xadd(self._keys.insights, fields)  # trimmed by the gateway's health loop
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._metrics.redis_errors.inc()
            log.warning("call %s: could not publish mark %r: %s", call.call_id, name, exc)
        self._metrics.marks.inc()
