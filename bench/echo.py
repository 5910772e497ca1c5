"""Echo round trip: N real-time calls through gateway → Redis → echo worker → Redis → egress.

Two runs with the same load, each against servers started here, in fresh processes:

1. **bare** — ``bench/bare_echo.py``: a bare ``websockets`` server that parses every message as
   the gateway's codec would (stdlib ``json`` and strict base64 only) and sends it straight back
   on the same socket. The reference for CPU and latency.
2. **callstream** — a private, empty ``redis-server`` on a free port, one ``callstream gateway``
   and one ``callstream worker echo --max-calls M`` (M = max(N, 250) unless ``--max-calls``),
   under a fresh ``CS_PREFIX``.

N callers open their WebSockets (``/ws/{call-id}?mode=mixed``) at the same moment, send ACS
``AudioMetadata`` (16 kHz) and then one ``AudioData`` every 20 ms for ``--seconds``, from one
absolute-schedule ticker with the calls spread over the 20 ms period (as ``bench/load.py``); the
callers are websockets' sans-I/O client on bare asyncio transports (no task, queue or
back-pressure wait per call), so the generator stays cheap and never waits for a slow server.
Every frame is unique — its first 12 bytes of PCM hold a marker, the call's index and the frame's
sequence number, the rest is one of 50 noise bodies (-20 dBFS, never silent) — so each frame
that comes back is checked byte for byte against what was sent, and its order within the call.

Reported for each run: frames sent, echoed back, missing, out of order, corrupted, duplicated
(all but the first two must be 0: the bench exits 1 otherwise); echo latency per frame (sent →
received back) p50/p99/max; first echo per call (its first frame sent → its first echo) p50/
p99/max; the fraction of frames back within 2 s of their call's last frame; CPU % of each server
process over the steady window (from ``--seconds``/4, at most 5 s, to the last frame), their
sum, and RSS; for callstream the Redis memory per live call (``used_memory`` 5 s before the end
of sending minus before the calls, / N) and the stage latencies from the processes' own
histograms (ingest, worker read delay, egress wake lateness); the load generator's tick
lateness and CPU. Then the comparison: CPU of callstream's three processes / bare, and the
latencies.

    python -m bench echo --calls 100 --seconds 60 --json out.json
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import binascii
import contextlib
import json
import math
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from bench import load, servers
from callstream.localredis import answers, server_args
from callstream.shared.audio import FRAME_MS, frame_bytes_for, is_silent
from callstream.shared.errors import InvalidFrame, ProtocolError
from callstream.shared.events import iso_time
from callstream.shared.protocols.acs import OutboundAudio, parse_outbound
from callstream.simulate import metadata_message

RATE_HZ = 16000
FRAME_BYTES = frame_bytes_for(RATE_HZ)
FRAME_S = FRAME_MS / 1000
# Marker, call index, sequence number: 12 bytes, a multiple of 3, so the base64 of a frame is the
# base64 of its header followed by the (pre-encoded) base64 of its body.
HEADER = struct.Struct("<4sII")
HEADER_B64 = HEADER.size // 3 * 4
MARKER = b"ECHO"
BODIES = 50
WITHIN_S = 2.0  # "back within 2 s of the call's end"
DRAIN_S = 15.0  # after the last frame, wait at most this long for the rest to come back
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
MAX_MESSAGE_BYTES = 64 * 1024

# Every subprocess still running, by pid: killed on the way out if a cleanup did not finish.
_CHILDREN: dict[int, str] = {}


# --------------------------------------------------------------------------- frames


class Frames:
    """The AudioData messages of the run: unique per (call, sequence number), built cheaply.

    A message is a pre-built head (kind, the frame's timestamp), the base64 of its 12-byte
    header, and a pre-built tail (the base64 of one of :data:`BODIES` noise bodies, ``silent``).
    """

    def __init__(self, frames_per_call: int, seed: int = 11) -> None:
        rng = np.random.default_rng(seed)
        samples = FRAME_BYTES // 2
        self.count = frames_per_call
        self.bodies: list[bytes] = []
        self.bodies_b64: list[str] = []  # canonical base64 of each body
        for _ in range(BODIES):
            noise = rng.normal(0, 3000, samples).clip(-32768, 32767).astype("<i2").tobytes()
            body = noise[HEADER.size :]
            self.bodies.append(body)
            self.bodies_b64.append(base64.b64encode(body).decode())
        self._tails = [data + '","silent":false}}' for data in self.bodies_b64]
        start_ms = int(time.time() * 1000)
        self._heads = [
            '{"kind":"AudioData","audioData":{"timestamp":"'
            + iso_time(start_ms + seq * FRAME_MS)
            + '","data":"'
            for seq in range(frames_per_call)
        ]
        sample = self.pcm(0, 0)
        if len(sample) != FRAME_BYTES or is_silent(sample):
            raise AssertionError("the bench's frames must be whole and not silent")

    def pcm(self, call: int, seq: int) -> bytes:
        return HEADER.pack(MARKER, call, seq) + self.bodies[seq % BODIES]

    def message(self, call: int, seq: int) -> str:
        header = binascii.b2a_base64(HEADER.pack(MARKER, call, seq), newline=False).decode()
        return self._heads[seq] + header + self._tails[seq % BODIES]


def data_of(message: str | bytes) -> str | None:
    """The base64 ``data`` of an echoed AudioData; None for any other message.

    The gateway's outbound spelling and the bare server's (the inbound message itself) are
    sliced without a JSON parse; any other spelling goes through the codec's ``parse_outbound``
    (and its PCM is encoded again). Raises ``ValueError`` for invalid base64 found there.
    """
    if isinstance(message, str) and message.startswith('{"kind":"AudioData"'):
        start = message.find('"data":"')
        if start >= 0:
            start += 8
            return message[start : message.find('"', start)]
    try:
        parsed = parse_outbound(message)
    except InvalidFrame as exc:
        raise ValueError(str(exc)) from None
    except ProtocolError:
        return None
    return base64.b64encode(parsed.pcm).decode() if isinstance(parsed, OutboundAudio) else None


# --------------------------------------------------------------------------- calls


@dataclass
class Tally:
    """What came back, over every call of a run."""

    received: int = 0
    corrupted: int = 0
    out_of_order: int = 0
    duplicated: int = 0
    unexpected: int = 0
    expected: float = math.inf  # frames sent, once the sending is over
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self) -> None:
        self.received += 1
        if self.received >= self.expected:
            self.done.set()


_SHORT = struct.Struct("!BBI")  # FIN + text opcode, MASK + length, masking key
_MEDIUM = struct.Struct("!BBHI")
_LONG = struct.Struct("!BBQI")


class Wire(asyncio.Protocol):
    """A caller's WebSocket on a bare asyncio transport, through websockets' sans-I/O client.

    No task, queue or lock per message: :meth:`send` frames (and masks) a message and writes it
    at once, and each message received is handed to ``on_message`` from ``data_received``. The
    asyncio client (``websockets.asyncio.client``) costs the generator more per message, and
    with 150 calls the generator's own CPU decides how late its ticks are. No back-pressure: a
    server that stops reading lets the writes queue here (as an ACS sender would not wait).
    """

    def __init__(self, url: str, on_message: Callable[[str], None]) -> None:
        self._ws = ClientProtocol(parse_uri(url), max_size=MAX_MESSAGE_BYTES)
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._ws.send_request(self._ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Response):
                if self._ws.handshake_exc is not None:
                    self.opened.set_exception(self._ws.handshake_exc)
                else:
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.CONT):
                if event.fin and not self._fragments:
                    self._on_message(str(event.data, "utf-8"))
                elif event.fin:
                    self._fragments.append(bytes(event.data))
                    self._on_message(b"".join(self._fragments).decode())
                    self._fragments.clear()
                else:
                    self._fragments.append(bytes(event.data))
        self._flush()

    def eof_received(self) -> None:
        self._ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, text: str) -> bool:
        """Send ``text`` as one text frame; False (nothing sent) once the connection is closing.

        The frame is built here, not by ``ClientProtocol.send_text`` (twice the cost): its mask
        key is zero, which RFC 6455 allows (a client must mask, with a key of its choosing;
        unpredictability only protects proxies from a hostile page), so the payload goes as is.
        The server unmasks it as any other.
        """
        if self._ws.state is not State.OPEN or self.closed.done():
            return False
        payload = text.encode()
        size = len(payload)
        if size < 126:
            header = _SHORT.pack(0x81, 0x80 | size, 0)
        elif size < 1 << 16:
            header = _MEDIUM.pack(0x81, 0x80 | 126, size, 0)
        else:
            header = _LONG.pack(0x81, 0x80 | 127, size, 0)
        assert self._transport is not None
        self._transport.write(header + payload)
        return True

    async def close(self) -> None:
        """Close handshake (1000), then wait for the server to close the TCP connection."""
        if self._ws.state is State.OPEN:
            self._ws.send_close(1000)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), STOP_TIMEOUT_S)
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()

    def _flush(self) -> None:
        transport = self._transport
        assert transport is not None
        for data in self._ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()


class Call:
    """One caller: its socket, and when each of its frames was sent and came back."""

    __slots__ = (
        "bodies",
        "bodies_b64",
        "clock",
        "closing",
        "error",
        "highest",
        "index",
        "received",
        "recv_at",
        "sent",
        "sent_at",
        "tally",
        "wire",
    )

    def __init__(self, index: int, frames: Frames, tally: Tally) -> None:
        self.index = index
        nan = array.array("d", [math.nan])
        self.sent_at = nan * frames.count  # loop time, by sequence number
        self.recv_at = nan * frames.count
        self.bodies = frames.bodies
        self.bodies_b64 = frames.bodies_b64
        self.tally = tally
        self.clock = asyncio.get_running_loop().time
        self.sent = 0
        self.received = 0
        self.highest = -1
        self.error: str | None = None
        self.closing = False
        self.wire: Wire | None = None

    def on_message(self, message: str) -> None:
        """Check one message that came back: the frame, exact, once, in order.

        The header (the first 16 base64 characters: marker, call, sequence number) is decoded;
        the rest is compared as text with the canonical base64 of the body sent, and only when
        it differs decoded (strictly) and compared as bytes, so a valid but other encoding of
        the same PCM still counts as exact.
        """
        now = self.clock()
        tally = self.tally
        try:
            data = data_of(message)
            if data is None:
                tally.unexpected += 1
                return
            marker, index, seq = HEADER.unpack(
                binascii.a2b_base64(data[:HEADER_B64], strict_mode=True)
            )
        except (ValueError, struct.error):
            tally.corrupted += 1
            return
        recv_at = self.recv_at
        if marker != MARKER or index != self.index or seq >= len(recv_at):
            tally.corrupted += 1
            return
        if data[HEADER_B64:] != self.bodies_b64[seq % BODIES]:
            try:
                pcm = binascii.a2b_base64(data, strict_mode=True)
            except ValueError:
                pcm = b""
            if pcm[HEADER.size :] != self.bodies[seq % BODIES]:
                tally.corrupted += 1
                return
        if not math.isnan(recv_at[seq]):
            tally.duplicated += 1
            return
        if seq < self.highest:
            tally.out_of_order += 1
        else:
            self.highest = seq
        recv_at[seq] = now
        self.received += 1
        tally.count()

    def check_open(self) -> bool:
        """False (and why, in ``error``) once the server closed the call."""
        if self.error is None and self.wire is not None and self.wire.closed.done():
            self.error = f"closed by the server (code {self.wire.close_code})"
        return self.error is None


async def open_calls(url: str, n: int, frames: Frames, tally: Tally) -> list[Call]:
    """Open ``n`` calls at the same moment; each sends its AudioMetadata once connected."""
    loop = asyncio.get_running_loop()
    tag = uuid.uuid4().hex[:6]
    uri = parse_uri(url)

    async def one(i: int) -> Call:
        call = Call(i, frames, tally)
        call_url = f"{url}/echo-{tag}-{i}?mode=mixed"
        _, wire = await loop.create_connection(
            lambda: Wire(call_url, call.on_message), uri.host, uri.port
        )
        call.wire = wire
        await asyncio.wait_for(wire.opened, START_TIMEOUT_S)
        wire.send(metadata_message(RATE_HZ))
        return call

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    calls = [r for r in results if isinstance(r, Call)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await close_calls(calls)
        raise RuntimeError(f"{len(errors)} of {n} calls could not connect: {errors[0]!r}")
    return calls


async def close_calls(calls: Sequence[Call]) -> None:
    for call in calls:
        call.check_open()
        call.closing = True
    await asyncio.gather(*(c.wire.close() for c in calls if c.wire), return_exceptions=True)


async def send_frames(
    calls: Sequence[Call], frames: Frames, on_start: Callable[[float], None]
) -> load.LoadStats:
    """Every call sends one frame per 20 ms, on one absolute schedule, spread over the period.

    ``on_start`` gets the loop time of the first tick.
    """
    loop = asyncio.get_running_loop()
    clock = loop.time
    stats = load.LoadStats()
    groups = [list(calls[i :: load.SUBSLOTS]) for i in range(load.SUBSLOTS)]
    slot_s = FRAME_S / load.SUBSLOTS
    ticks = frames.count * load.SUBSLOTS
    message = frames.message
    lateness = stats.lateness_ms
    t0 = clock() + 0.05
    on_start(t0)
    started = time.perf_counter()
    for tick in range(ticks):
        due = t0 + tick * slot_s
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness.append((clock() - due) * 1000)
        seq = tick // load.SUBSLOTS
        for call in groups[tick % load.SUBSLOTS]:
            if call.error is not None or (seq % 50 == 0 and not call.check_open()):
                continue
            assert call.wire is not None
            text = message(call.index, seq)
            call.sent_at[seq] = clock()
            if call.wire.send(text):
                call.sent += 1
            else:
                call.sent_at[seq] = math.nan
                call.check_open()
    stats.frames_sent = sum(c.sent for c in calls)
    stats.seconds = time.perf_counter() - started
    return stats


# --------------------------------------------------------------------------- processes


@contextlib.asynccontextmanager
async def child_process(
    name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process, stopped (SIGTERM, then SIGKILL) when the context exits."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
    )
    _CHILDREN[proc.pid] = name
    try:
        yield proc
    finally:
        await servers.stop(proc, STOP_TIMEOUT_S)
        _CHILDREN.pop(proc.pid, None)


@contextlib.asynccontextmanager
async def tracked(
    running: contextlib.AbstractAsyncContextManager[servers.Server],
) -> AsyncIterator[servers.Server]:
    """``servers.running``, with its pid known to the last-resort cleanup until it is gone."""
    pid: int | None = None
    try:
        async with running as server:
            pid = server.pid
            _CHILDREN[pid] = server.name
            yield server
    finally:
        if pid is not None and not _alive(pid):
            _CHILDREN.pop(pid, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_leftovers() -> None:
    """SIGKILL every child whose cleanup did not finish (a second Ctrl-C, a crash)."""
    for pid, name in list(_CHILDREN.items()):
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            print(f"killed {name} (pid {pid})", file=sys.stderr)
        _CHILDREN.pop(pid, None)


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[tuple[str, int]]:
    """An empty, loopback-only ``redis-server`` on a free port: (its URL, its pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = servers.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory(prefix="bench-echo-redis-") as workdir:
        argv = [binary, *server_args(port, workdir), "--logfile", ""]
        async with child_process("redis-server", argv) as proc:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not await answers(url, timeout_s=0.2):
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer on port {port}")
                await asyncio.sleep(0.05)
            yield url, proc.pid


async def wait_until_ready(
    name: str, port: int, proc: asyncio.subprocess.Process, path: str = "/readyz"
) -> None:
    """Until the process answers 200 on ``path`` (a worker's ``/readyz``: Redis answers and its
    consumer group exists, so it takes a call as soon as the call starts)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    why = "no answer"
    while True:
        try:
            await asyncio.to_thread(servers.http_get, f"http://127.0.0.1:{port}{path}", 1.0)
            return
        except OSError as exc:  # refused, or HTTPError: 503 with the reason
            why = str(exc)
        if proc.returncode is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} at start")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was not ready within {START_TIMEOUT_S:g} s: {why}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- one run


@dataclass
class Probe:
    """The server processes of a run, and the histograms that explain its latency."""

    processes: list[servers.Server]
    histograms: list[tuple[str, servers.Server, str]] = field(default_factory=list)
    counters: list[tuple[str, servers.Server, str]] = field(default_factory=list)
    redis: aioredis.Redis | None = None

    def cpu(self) -> dict[str, float]:
        return {p.name: p.cpu_seconds() for p in self.processes}

    def rss(self) -> dict[str, int]:
        return {p.name: p.rss_bytes() for p in self.processes}

    errors: list[str] = field(default_factory=list)  # scrapes that failed (an overloaded server)

    async def snapshot(self) -> dict[str, servers.Histogram]:
        """The histograms that could be read (5 s each at most)."""
        found = {}
        for label, server, metric in self.histograms:
            try:
                found[label] = await asyncio.to_thread(servers.gateway_histogram, server, metric)
            except (OSError, RuntimeError) as exc:  # TimeoutError and URLError are OSErrors
                self.errors.append(f"{label} from {server.name}: {exc!r}")
        return found

    async def counts(self) -> dict[str, float]:
        """The counters that could be read (a metric renamed since is left out)."""
        found = {}
        for label, server, metric in self.counters:
            try:
                found[label] = await asyncio.to_thread(servers.gateway_counter, server, metric)
            except (OSError, RuntimeError) as exc:
                self.errors.append(f"{label} from {server.name}: {exc!r}")
        return found

    async def redis_memory(self) -> int | None:
        if self.redis is None:
            return None
        return int((await self.redis.info("memory"))["used_memory"])


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core, every process), from /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _percentiles(values: np.ndarray[Any, np.dtype[np.float64]]) -> dict[str, float] | None:
    if values.size == 0:
        return None
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(values.max())}


async def drive(ws_url: str, probe: Probe, calls_n: int, seconds: float) -> dict[str, Any]:
    """The load against one set of servers, and every figure of the run."""
    loop = asyncio.get_running_loop()
    frames = Frames(int(seconds * 1000 / FRAME_MS))
    warmup_s = min(5.0, seconds / 4)
    memory_at_s = seconds - 5 if seconds > 10 else seconds / 2
    tally = Tally()
    memory0 = await probe.redis_memory()
    counts0 = await probe.counts()
    rss0 = probe.rss()
    calls = await open_calls(ws_url, calls_n, frames, tally)
    window: dict[str, Any] = {}
    t0_box: list[float] = []
    first_tick = asyncio.Event()

    def started(t0: float) -> None:
        t0_box.append(t0)
        first_tick.set()

    async def window_start() -> None:
        await first_tick.wait()
        await asyncio.sleep(max(0.0, t0_box[0] + warmup_s - loop.time()))
        window["hist0"] = await probe.snapshot()
        window["t0"] = time.perf_counter()
        window["cpu0"] = probe.cpu()
        window["gen0"] = time.process_time()
        window["machine0"] = machine_busy_s()

    async def memory_probe() -> None:
        await first_tick.wait()
        await asyncio.sleep(max(0.0, t0_box[0] + memory_at_s - loop.time()))
        window["memory"] = await probe.redis_memory()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(window_start())
            group.create_task(memory_probe())
            stats = await send_frames(calls, frames, started)
            t1 = time.perf_counter()
            cpu1 = probe.cpu()
            gen1 = time.process_time()
            machine1 = machine_busy_s()
            rss1 = probe.rss()
        hist1 = await probe.snapshot()
        tally.expected = sum(c.sent for c in calls)
        if tally.received >= tally.expected:
            tally.done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.done.wait(), DRAIN_S)
        counts1 = await probe.counts()
    finally:
        await close_calls(calls)

    wall = t1 - window["t0"]
    cpu_pct = {name: 100 * (cpu1[name] - window["cpu0"][name]) / wall for name in cpu1}
    # calls × frames, by sequence number (NaN: not sent, or not back)
    sent_at = np.stack([np.frombuffer(c.sent_at, dtype=np.float64) for c in calls])
    recv_at = np.stack([np.frombuffer(c.recv_at, dtype=np.float64) for c in calls])
    latency = (recv_at - sent_at) * 1000
    latency_ms = latency[~np.isnan(latency)]
    first_echo_ms = []
    within = 0
    for i, c in enumerate(calls):
        if c.sent:
            within += int(np.count_nonzero(recv_at[i] <= sent_at[i, c.sent - 1] + WITHIN_S))
        if c.received:
            first_echo_ms.append((float(np.nanmin(recv_at[i])) - sent_at[i, 0]) * 1000)
    per_s = int(1000 / FRAME_MS)
    with warnings.catch_warnings():  # all-NaN slices (nothing back) give NaN, as they should
        warnings.simplefilter("ignore", RuntimeWarning)
        # Egress paces playback on an absolute schedule: after a stall the schedule restarts
        # late and, with frames arriving at exactly real time, stays late. The smallest latency
        # of each call's last second shows where that left it.
        last_second_min = np.nanmin(latency[:, -per_s:], axis=1)
        by_second = [
            float(np.nanmedian(latency[:, k : k + per_s])) for k in range(0, frames.count, per_s)
        ]
    lateness = np.asarray(stats.lateness_ms)
    result: dict[str, Any] = {
        "calls": calls_n,
        "seconds": seconds,
        "frames_sent": stats.frames_sent,
        "frames_echoed": tally.received,
        "frames_missing": stats.frames_sent - tally.received,  # not back DRAIN_S after the end
        "drain_s": DRAIN_S,
        "frames_out_of_order": tally.out_of_order,
        "frames_corrupted": tally.corrupted,
        "frames_duplicated": tally.duplicated,
        "unexpected_messages": tally.unexpected,
        "calls_failed": {str(c.index): c.error for c in calls if c.error is not None},
        "echo_latency_ms": _percentiles(latency_ms),
        "first_echo_ms": _percentiles(np.asarray(first_echo_ms)),
        "last_second_min_latency_ms": _percentiles(last_second_min[~np.isnan(last_second_min)]),
        "echo_latency_p50_by_second_ms": by_second,
        "calls_without_echo": sum(1 for c in calls if not c.received),
        "back_within_2s_of_call_end": within / stats.frames_sent if stats.frames_sent else 0.0,
        "window_s": wall,
        "cpu_pct": cpu_pct,
        "cpu_pct_total": sum(cpu_pct.values()),
        "rss_mib": {name: rss1[name] / 2**20 for name in rss1},
        "rss_growth_per_call_kib": {
            name: (rss1[name] - rss0[name]) / calls_n / 1024 for name in rss1
        },
        "generator": {
            "lateness_ms": {
                "p50": float(np.percentile(lateness, 50)),
                "p99": float(np.percentile(lateness, 99)),
                "max": float(lateness.max()),
            },
            "cpu_pct": 100 * (gen1 - window["gen0"]) / wall,
        },
    }
    # The machine is shared: what everything else on it used over the same window.
    machine_pct = 100 * (machine1 - window["machine0"]) / wall
    result["machine_cpu_pct"] = {
        "busy": machine_pct,
        "cores": os.cpu_count(),
        "other_processes": machine_pct - result["cpu_pct_total"] - result["generator"]["cpu_pct"],
    }
    result["passed"] = (
        result["frames_missing"] == 0
        and tally.out_of_order == 0
        and tally.corrupted == 0
        and tally.duplicated == 0
        and tally.unexpected == 0
        and not result["calls_failed"]
    )
    if memory0 is not None and window.get("memory") is not None:
        result["redis_used_memory_mib"] = {
            "before": memory0 / 2**20,
            f"at_{memory_at_s:g}s": window["memory"] / 2**20,
        }
        result["redis_memory_per_call_kib"] = (window["memory"] - memory0) / calls_n / 1024
    stages = {}
    for label, hist in hist1.items():
        if label not in window["hist0"]:
            continue
        delta = hist.minus(window["hist0"][label])
        stages[label] = {
            "p50": delta.quantile(0.5) * 1000,
            "p99": delta.quantile(0.99) * 1000,
            "samples": delta.count,
        }
    if stages:
        result["stage_latency_ms"] = stages
    counters = {k: v - counts0[k] for k, v in counts1.items() if k in counts0}
    if counters:
        result["counters"] = counters
    if probe.errors:
        result["probe_errors"] = probe.errors
    return result


async def run_bare(calls: int, seconds: float) -> dict[str, Any]:
    port = servers.free_port()
    argv = [sys.executable, "-m", "bench.bare_echo", "--port", str(port)]
    async with tracked(servers.running("bare", argv, port, "/stats", {})) as server:
        return await drive(server.ws_url, Probe([server]), calls, seconds)


async def run_callstream(calls: int, seconds: float, max_calls: int) -> dict[str, Any]:
    prefix = f"bench-echo-{uuid.uuid4().hex[:8]}"
    async with private_redis() as (redis_url, redis_pid):
        env = {"REDIS_URL": redis_url, "CS_PREFIX": prefix}
        metrics_port = servers.free_port()
        worker_argv = servers.worker(
            "echo",
            "--max-calls",
            str(max_calls),
            "--metrics-port",
            str(metrics_port),
            "--metrics-host",
            "127.0.0.1",
        )
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with child_process("worker", worker_argv, env) as worker_proc:
                argv, port = servers.gateway(env)
                async with tracked(servers.running("gateway", argv, port, "/readyz", env)) as gw:
                    await wait_until_ready("the echo worker", metrics_port, worker_proc)
                    worker = servers.Server("worker", worker_proc.pid, metrics_port)
                    probe = Probe(
                        [gw, worker, servers.Server("redis-server", redis_pid, 0)],
                        histograms=[
                            ("ingest", gw, "callstream_ingest_latency_seconds"),
                            ("worker_read_delay", worker, "callstream_worker_delay_seconds"),
                            ("egress_wake_lateness", gw, "callstream_egress_wake_lateness_seconds"),
                        ],
                        counters=[
                            (
                                "egress_schedule_restarts",
                                gw,
                                "callstream_egress_schedule_restarts_total",
                            ),
                            ("egress_frames_sent", gw, "callstream_egress_frames_sent_total"),
                        ],
                        redis=client,
                    )
                    result = await drive(f"{gw.ws_url}", probe, calls, seconds)
        finally:
            await client.aclose()
    result["max_calls"] = max_calls
    return result


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, spec)
    )


def _get(run: dict[str, Any] | None, *path: str) -> Any:
    value: Any = run
    for key in path:
        if not isinstance(value, dict) or key not in value or value[key] is None:
            return None
        value = value[key]
    return value


def report(results: dict[str, Any]) -> str:
    bare: dict[str, Any] | None = results.get("bare")
    cs: dict[str, Any] = results["callstream"]
    runs = [("bare echo", bare), ("callstream", cs)]
    width = 44

    def row(label: str, cells: Sequence[str]) -> str:
        return f"{label:{width}}" + "".join(f"{cell:>16}" for cell in cells)

    def each(*path: str, spec: str = ".1f") -> list[str]:
        return [_fmt(_get(run, *path), spec) for _, run in runs]

    lines = ["", row("", [name for name, _ in runs])]
    lines.append(
        row("calls / seconds", [f"{r['calls']} / {r['seconds']:g}" if r else "-" for _, r in runs])
    )
    lines.append(row("frames sent", each("frames_sent", spec="d")))
    lines.append(row("frames echoed back", each("frames_echoed", spec="d")))
    lines.append(
        row(
            f"missing/disorder/corrupt/dup ({DRAIN_S:g} s drain)",
            [
                "-"
                if r is None
                else f"{r['frames_missing']}/{r['frames_out_of_order']}/"
                f"{r['frames_corrupted']}/{r['frames_duplicated']}"
                for _, r in runs
            ],
        )
    )
    lines.append(row("calls failed", [str(len(r["calls_failed"])) if r else "-" for _, r in runs]))
    for q in ("p50", "p99", "max"):
        lines.append(row(f"echo latency {q} ms", each("echo_latency_ms", q, spec=".2f")))
    for q in ("p50", "p99", "max"):
        lines.append(row(f"first echo per call {q} ms", each("first_echo_ms", q)))
    lines.append(
        row("echo latency floor, last 1 s: p50 of calls", each("last_second_min_latency_ms", "p50"))
    )
    lines.append(row("  max of calls ms", each("last_second_min_latency_ms", "max")))
    lines.append(
        row(
            "frames back within 2 s of call end %",
            ["-" if r is None else f"{100 * r['back_within_2s_of_call_end']:.3f}" for _, r in runs],
        )
    )
    for name in ("bare", "gateway", "worker", "redis-server"):
        cells = each("cpu_pct", name)
        if any(c != "-" for c in cells):
            lines.append(row(f"CPU % {name} (steady window)", cells))
    lines.append(row("CPU % servers total", each("cpu_pct_total")))
    lines.append(row("  callstream / bare", ["", _fmt(results.get("cpu_ratio"), ".2f")]))
    for name in ("bare", "gateway", "worker", "redis-server"):
        cells = each("rss_mib", name)
        if any(c != "-" for c in cells):
            lines.append(row(f"RSS MiB {name}", cells))
    lines.append(row("Redis memory per live call KiB", each("redis_memory_per_call_kib")))
    for stage in ("ingest", "worker_read_delay", "egress_wake_lateness"):
        cells = [
            f"{_fmt(_get(r, 'stage_latency_ms', stage, 'p50'))} / "
            f"{_fmt(_get(r, 'stage_latency_ms', stage, 'p99'))}"
            if _get(r, "stage_latency_ms", stage)
            else "-"
            for _, r in runs
        ]
        lines.append(row(f"{stage} p50 / p99 ms", cells))
    restarts = each("counters", "egress_schedule_restarts", spec=".0f")
    lines.append(row("egress schedule restarts (fell behind)", restarts))
    lines.append(
        row("generator lateness p50 ms", each("generator", "lateness_ms", "p50", spec=".2f"))
    )
    lines.append(
        row("generator lateness p99 ms", each("generator", "lateness_ms", "p99", spec=".2f"))
    )
    lines.append(
        row("generator lateness max ms", each("generator", "lateness_ms", "max", spec=".2f"))
    )
    lines.append(row("generator CPU %", each("generator", "cpu_pct")))
    lines.append(row("machine CPU % busy (all cores)", each("machine_cpu_pct", "busy")))
    lines.append(row("  of which other processes", each("machine_cpu_pct", "other_processes")))
    lines.append(
        row(
            "passed (every frame back, exact, in order)",
            ["-" if r is None else ("yes" if r["passed"] else "NO") for _, r in runs],
        )
    )
    for name, r in runs:
        for error in (r or {}).get("probe_errors", []):
            lines.append(f"{name}: could not read {error}")
    for name, r in runs:
        if r is not None:
            series = r["echo_latency_p50_by_second_ms"][::5]
            lines.append(
                f"{name}: echo latency p50 at 0, 5, 10, ... s of the run (ms): "
                + " ".join(_fmt(v) for v in series)
            )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="seconds of audio per call (default 60)"
    )
    parser.add_argument(
        "--max-calls",
        type=int,
        default=None,
        help="the echo worker's --max-calls (default max(calls, 250))",
    )
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--skip-bare", action="store_true", help="skip the bare-server baseline")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM (a timeout, a supervisor) cleans up as Ctrl-C does.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    max_calls = args.max_calls if args.max_calls is not None else max(args.calls, 250)
    results: dict[str, Any] = {"calls": args.calls, "seconds": args.seconds, "rate_hz": RATE_HZ}
    if not args.skip_bare:
        print(f"[bare] {args.calls} calls, {args.seconds:g} s", flush=True)
        results["bare"] = await run_bare(args.calls, args.seconds)
        print(f"[bare]   {_summary(results['bare'])}", flush=True)
    print(
        f"[callstream] {args.calls} calls, {args.seconds:g} s, worker --max-calls {max_calls}",
        flush=True,
    )
    results["callstream"] = await run_callstream(args.calls, args.seconds, max_calls)
    print(f"[callstream]   {_summary(results['callstream'])}", flush=True)
    if "bare" in results and results["bare"]["cpu_pct_total"]:
        results["cpu_ratio"] = (
            results["callstream"]["cpu_pct_total"] / results["bare"]["cpu_pct_total"]
        )
    results["passed"] = all(
        results[name]["passed"] for name in ("bare", "callstream") if name in results
    )
    return results


def _summary(run: dict[str, Any]) -> str:
    latency = run["echo_latency_ms"] or {}
    return (
        f"{run['frames_echoed']}/{run['frames_sent']} frames back, "
        f"missing {run['frames_missing']}, out of order {run['frames_out_of_order']}, "
        f"corrupted {run['frames_corrupted']}; echo p50 {_fmt(latency.get('p50'), '.2f')} ms, "
        f"p99 {_fmt(latency.get('p99'), '.2f')} ms; CPU {run['cpu_pct_total']:.0f} %"
    )


def main(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.seconds < 2:
        print("--calls must be at least 1 and --seconds at least 2", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: subprocesses stopped", file=sys.stderr)
        return 130
    finally:
        kill_leftovers()
    print(report(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    if not results["passed"]:
        print("FAILED: frames were lost, corrupted, duplicated or out of order", file=sys.stderr)
        return 1
    return 0
