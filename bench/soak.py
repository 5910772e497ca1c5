"""Hostile soak (issue 9): echo calls for minutes while replicas die, Redis restarts and a
hostile client attacks the gateway.

A private ``redis-server`` (append-only file in a temporary directory, so that a restart keeps
the streams, consumer groups and checkpoints), one ``callstream gateway`` and
``--echo-replicas`` ``callstream worker echo`` replicas (heartbeat 0.5 s) that are stopped in
turn, plus ``--steady-replicas`` that never are (a worker that lives through the whole soak, for
its memory). ``--calls`` callers keep that many real-time 16 kHz echo calls live for
``--minutes``: each call lasts a random ``--call-seconds`` (30-120 s) of unique frames, each
checked to come back exact, once and in order (``bench/echo.py``'s callers), sends silence until
its echo is complete (``DRAIN_S`` at most), hangs up, and a new call with a new id takes its
place. The good callers connect from 127.0.1.1-16, the hostile client from 127.0.2.x.

Chaos: every ``--chaos-every`` seconds the oldest stoppable replica gets SIGKILL or SIGTERM
(alternately) and a fresh one starts; once, at about the middle, redis-server is stopped
(SIGTERM) and started again ``--redis-down-s`` later on the same port and files. Calls whose
socket was open while Redis was down are counted apart ("lost Redis": the gateway closes them
with 1011 once their entries fail); their callers start new calls.

The hostile client runs a round of the attacks of issue 9 every ``--attack-every`` seconds,
with the gateway's limits on (``CS_MAX_CONNECTIONS_PER_ADDRESS`` 64, the others at their
defaults), each against the answer docs/protocol.md documents:

- C: 60 sockets that send AudioMetadata and nothing more: 1008 ``no message for 5 s``, never
  published as calls;
- D: an unmixed call naming a new participantRawID each frame: 1008 at the 65th; a call
  cycling through five ids for 10 s: not closed, echoed whole;
- E: a 60 000-character participantRawID: 1007; a sender 20 times faster than real time:
  1008 ``too_fast``; a client that streams and never reads its socket: 1008 ``not reading``
  after ``CS_EGRESS_STALL_TIMEOUT_S``, cut after the close timeout (the gateway's RSS and
  kernel send queue for it reported); one socket more than the per-address limit: HTTP 429;
- A: a call that hangs up without waiting for its echo, and a call with the same id right
  after: the second hears only its own audio, all of it, published as ``id~2``;
- B: the id of a live good call: HTTP 409, and that call loses nothing;
- H: a lone surrogate in participantRawID, escaped (the codec) and as raw bytes (websockets'
  UTF-8 check): 1007.

Attacks that overlapped the Redis outage are reported but not judged. Memory (VmRSS of every
process, Redis ``used_memory``) is sampled after the warm-up, every minute, and just before the
calls stop.

Exit 1 if a call that did not lose Redis missed, corrupted or reordered a frame, was closed by
the gateway, or got a frame twice without a SIGKILL of its replica to explain it (a hand-back
repeats nothing: docs/workers.md); if an attack's answer differs from the documented one; if a
process exited that was not stopped, or a stopped one did not exit 0 on SIGTERM.

    python -m bench soak --calls 100 --minutes 10 --json out.json
"""

from __future__ import annotations

import argparse
import array
import asyncio
import binascii
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.uri import parse_uri

from bench import echo, load, servers
from callstream.localredis import answers
from callstream.shared.entries import StreamEntries
from callstream.shared.events import iso_time
from callstream.shared.settings import Settings
from callstream.simulate import metadata_message

RATE_HZ = echo.RATE_HZ
FRAME_S = echo.FRAME_S
PER_S = round(1 / FRAME_S)
HEARTBEAT_S = 0.5
IDLE_TIMEOUT_S = 5  # CS_INBOUND_IDLE_TIMEOUT_S (the default, set explicitly)
MAX_PARTICIPANTS = 64  # CS_MAX_PARTICIPANTS (default)
MAX_MESSAGES_PER_S = 250  # CS_MAX_MESSAGES_PER_S (default)
PER_ADDRESS = 64  # CS_MAX_CONNECTIONS_PER_ADDRESS (off by default; on here)
GOOD_ADDRESSES = [f"127.0.1.{i}" for i in range(1, 17)]
IDLE_ADDRESS = "127.0.2.1"  # attack C's sockets
CROWD_ADDRESS = "127.0.2.2"  # the per-address limit
HOSTILE_ADDRESS = "127.0.2.3"  # every other attack (one socket at a time)
NEVER_READ_ADDRESS = "127.0.2.4"
DRAIN_S = 20.0  # after its last frame, a call waits at most this long for its echo
MIN_CALL_S = 5.0  # no new call is started with less than this left
IDLE_SOCKETS = 60
NEVER_READ_S = 100.0  # the never-reader gives up then (websockets' keepalive would cut it at 50 s)
ATTACK_ROUND_S = 120.0  # a round (the never-reader) takes this long at most
STOP_TIMEOUT_S = 30.0
OUTAGE_MARGIN_S = 5.0  # an attack this close to the Redis outage is not judged
IDLE_REASON = f"no message for {IDLE_TIMEOUT_S:g} s"
CROWD_REASON = f"more than {MAX_PARTICIPANTS} participants in one call (CS_MAX_PARTICIPANTS)"
FAST_REASON = f"more than {MAX_MESSAGES_PER_S} messages a second (CS_MAX_MESSAGES_PER_S)"
LONG_FIELD = "expected 'participantrawid' to be at most 256 characters"


def silent_message(participant: str | None = None) -> str:
    """A silent AudioData (the echo worker plays nothing back for it), as ACS sends between
    words."""
    body: dict[str, Any] = {
        "timestamp": iso_time(int(time.time() * 1000)),
        "data": binascii.b2a_base64(bytes(echo.FRAME_BYTES), newline=False).decode(),
        "silent": True,
    }
    if participant is not None:
        body["participantRawID"] = participant
    return json.dumps({"kind": "AudioData", "audioData": body})


def with_participant(message: str, participant: str) -> str:
    """``echo.Frames``' message with a participantRawID (an unmixed call's frame)."""
    return message.replace('"audioData":{', f'"audioData":{{"participantRawID":"{participant}",', 1)


# --------------------------------------------------------------------------- processes


def _log_fd(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


@dataclass
class Child:
    """A server process of the soak."""

    name: str
    proc: asyncio.subprocess.Process
    port: int  # its HTTP port (readyz, metrics); 0 for redis-server
    started_s: float
    steady: bool = False
    stopping: bool = False  # stopped by the soak: its exit is expected
    metrics: dict[str, float] = field(default_factory=dict)  # last scrape

    def rss_mib(self) -> float | None:
        try:
            return servers.Server(self.name, self.proc.pid, self.port).rss_bytes() / 2**20
        except (OSError, RuntimeError):
            return None


def scrape(port: int, timeout_s: float = 5.0) -> dict[str, float]:
    """Every sample of a process's /metrics, as ``name{label="value",...}`` → value."""
    text = servers.http_get(f"http://127.0.0.1:{port}/metrics", timeout_s)
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def picked(samples: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v for k, v in samples.items() if k.startswith(prefix)}


class Lab:
    """The processes under test: a restartable private redis-server, a gateway, echo replicas."""

    def __init__(self, workdir: str, max_calls: int) -> None:
        self.workdir = workdir
        self.logs = os.path.join(workdir, "logs")
        self.data = os.path.join(workdir, "redis")
        os.makedirs(self.logs)
        os.makedirs(self.data)
        self.max_calls = max_calls
        self.redis_port = servers.free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.settings = Settings(
            redis_url=self.redis_url, prefix=f"bench-soak-{uuid.uuid4().hex[:8]}"
        )
        self.keys = self.settings.keys
        self.env = {
            "REDIS_URL": self.redis_url,
            "CS_PREFIX": self.settings.prefix,
            "CS_INBOUND_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
            "CS_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
        }
        self.clock = asyncio.get_running_loop().time
        self.t0 = self.clock()
        self.redis: Child | None = None
        self.gateway: Child | None = None
        self.workers: list[Child] = []  # running
        self.every_worker: list[Child] = []
        self.unexpected_exits: list[dict[str, Any]] = []
        self.shutdown_exits: dict[str, int | str] = {}
        self._started = 0

    @property
    def gateway_url(self) -> str:
        assert self.gateway is not None
        return f"ws://127.0.0.1:{self.gateway.port}/ws"

    def at(self) -> float:
        """Seconds since the lab started."""
        return self.clock() - self.t0

    async def _spawn(
        self, name: str, argv: Sequence[str], port: int, env: dict[str, str] | None = None
    ) -> Child:
        fd = _log_fd(os.path.join(self.logs, f"{name}.log"))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env={**os.environ, **(env or {})},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
            )
        finally:
            os.close(fd)
        echo._CHILDREN[proc.pid] = name
        return Child(name, proc, port, self.at())

    async def start_redis(self) -> float:
        """Start redis-server (again) on its port and files; seconds until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        argv = [
            binary,
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            self.data,
            "--logfile",
            "",
        ]
        began = self.clock()
        self.redis = await self._spawn("redis-server", argv, 0)
        deadline = began + echo.START_TIMEOUT_S
        while not await answers(self.redis_url, timeout_s=0.2):
            if self.redis.proc.returncode is not None or self.clock() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.redis_port}")
            await asyncio.sleep(0.02)
        return self.clock() - began

    async def start_gateway(self) -> Child:
        argv, port = servers.gateway(self.env)
        self.gateway = await self._spawn("gateway", argv, port, self.env)
        await echo.wait_until_ready("the gateway", port, self.gateway.proc)
        return self.gateway

    async def start_worker(self, *, steady: bool) -> Child:
        name = f"{'steady' if steady else 'echo'}-{self._started}"
        self._started += 1
        port = servers.free_port()
        argv = servers.worker(
            "echo",
            "--consumer",
            name,
            "--heartbeat-s",
            str(HEARTBEAT_S),
            "--max-calls",
            str(self.max_calls),
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        )
        child = await self._spawn(name, argv, port, self.env)
        child.steady = steady
        await echo.wait_until_ready(name, port, child.proc)
        self.workers.append(child)
        self.every_worker.append(child)
        return child

    async def stop(self, child: Child, how: signal.Signals) -> int | str:
        """Signal ``child`` and reap it: its exit code (``timeout``: killed after 30 s)."""
        child.stopping = True
        if child in self.workers:
            self.workers.remove(child)
        if child.proc.returncode is None:
            child.proc.send_signal(how)
        code: int | str
        try:
            code = await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            child.proc.kill()
            await child.proc.wait()
            code = "timeout"
        echo._CHILDREN.pop(child.proc.pid, None)
        return code

    def check_exits(self) -> None:
        """Record every process that exited without being stopped."""
        for child in [self.redis, self.gateway, *self.workers]:
            if child is None or child.stopping or child.proc.returncode is None:
                continue
            child.stopping = True
            if child in self.workers:
                self.workers.remove(child)
            echo._CHILDREN.pop(child.proc.pid, None)
            self.unexpected_exits.append(
                {
                    "process": child.name,
                    "exit": child.proc.returncode,
                    "at_s": round(self.at(), 1),
                    "log": os.path.join(self.logs, f"{child.name}.log"),
                }
            )

    async def shutdown(self) -> None:
        """SIGTERM everything: the gateway first (it publishes its calls' ends), then the
        workers, then Redis. Exit codes are kept."""
        for child in [self.gateway, *list(self.workers), self.redis]:
            if child is not None and not child.stopping:
                self.shutdown_exits[child.name] = await self.stop(child, signal.SIGTERM)


# --------------------------------------------------------------------------- good calls


class Good:
    """A good call: ``bench/echo.py``'s caller (unique frames, each checked as it comes back)
    with a length and a lifetime."""

    def __init__(self, index: int, call_id: str, frames_n: int, frames: echo.Frames) -> None:
        self.index = index
        self.call_id = call_id
        self.frames_n = frames_n
        self.tally = echo.Tally()
        self.call = echo.Call(index, frames, self.tally)
        self.seq = 0  # the next frame to send
        self.group = -1
        self.audio_over = asyncio.Event()  # every frame sent, or the socket closed
        self.opened_s = math.nan
        self.stops: list[str] = []  # stops of a replica that owned it: SIGKILL, SIGTERM


class Ticker:
    """Every live good call sends one frame per 20 ms, from one absolute-schedule ticker with
    the calls spread over the period (as ``bench/echo.py``); after its last frame, silence."""

    def __init__(self, frames: echo.Frames) -> None:
        self.frames = frames
        self.groups: list[set[Good]] = [set() for _ in range(load.SUBSLOTS)]
        self.lateness_ms = array.array("d")
        self.running = True
        self.silent = silent_message()

    def add(self, good: Good) -> None:
        good.group = min(range(load.SUBSLOTS), key=lambda i: len(self.groups[i]))
        self.groups[good.group].add(good)

    def remove(self, good: Good) -> None:
        self.groups[good.group].discard(good)

    def live(self) -> list[Good]:
        return [good for group in self.groups for good in group]

    async def run(self) -> None:
        clock = asyncio.get_running_loop().time
        slot_s = FRAME_S / load.SUBSLOTS
        message = self.frames.message
        silent = self.silent
        lateness = self.lateness_ms
        t0 = clock()
        tick = 0
        while self.running:
            due = t0 + tick * slot_s
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            now = clock()
            lateness.append((now - due) * 1000)
            for good in list(self.groups[tick % load.SUBSLOTS]):
                call = good.call
                wire = call.wire
                assert wire is not None
                seq = good.seq
                if seq < good.frames_n:
                    if wire.send(message(good.index, seq)):
                        call.sent_at[seq] = now
                        call.sent += 1
                        good.seq = seq + 1
                        if good.seq == good.frames_n:
                            good.audio_over.set()
                        continue
                elif wire.send(silent):
                    continue
                self.remove(good)  # the gateway closed it
                good.audio_over.set()
            tick += 1


async def open_wire(
    url: str, on_message: Callable[[str], None], address: str, rcvbuf: int = 0
) -> tuple[echo.Wire, asyncio.Transport]:
    """``bench/echo.py``'s sans-I/O caller, connected from ``address`` (a loopback address of
    the caller's choosing: the gateway limits sockets per address); InvalidStatus if the
    upgrade is refused."""
    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((address, 0))
        await loop.sock_connect(sock, (uri.host, uri.port))
    except BaseException:
        sock.close()
        raise
    transport, wire = await loop.create_connection(lambda: echo.Wire(url, on_message), sock=sock)
    try:
        await asyncio.wait_for(wire.opened, echo.START_TIMEOUT_S)
    except BaseException:
        transport.abort()
        raise
    return wire, transport


def closed_by_gateway(wire: echo.Wire) -> tuple[int, str] | None:
    """The close code and reason the gateway sent, first (1006 if it dropped the connection
    without a close frame); None if it did neither (before the caller closes)."""
    ws = wire._ws  # the sans-I/O protocol keeps the close frames
    if ws.close_rcvd is not None and (ws.close_sent is None or ws.close_rcvd_then_sent):
        return ws.close_rcvd.code, ws.close_rcvd.reason
    if wire.closed.done() and ws.close_sent is None:
        return 1006, "dropped without a close frame"
    return None


async def drain(wire: echo.Wire, call: echo.Call, silent: str, limit_s: float = DRAIN_S) -> bool:
    """Silence until every frame sent came back (``limit_s`` at most); False if the gateway
    closed the socket meanwhile."""
    clock = asyncio.get_running_loop().time
    deadline = clock() + limit_s
    while call.received < call.sent and clock() < deadline:
        if not wire.send(silent):
            break
        await asyncio.sleep(FRAME_S)
    return not wire.closed.done()


async def stream(
    wire: echo.Wire,
    call: echo.Call,
    frames: echo.Frames,
    count: int,
    decorate: Callable[[str, int], str] | None = None,
) -> bool:
    """Send ``count`` unique frames of ``call`` at real time; False if the gateway closed the
    socket meanwhile."""
    clock = asyncio.get_running_loop().time
    t0 = clock()
    for seq in range(count):
        delay = t0 + seq * FRAME_S - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        message = frames.message(call.index, seq)
        if decorate is not None:
            message = decorate(message, seq)
        if not wire.send(message):
            return False
        call.sent_at[seq] = clock()
        call.sent += 1
    return True


def call_figures(call: echo.Call, sent: int) -> dict[str, Any]:
    return {
        "sent": sent,
        "echoed": call.received,
        "missing": sent - call.received,
        "duplicated": call.tally.duplicated,
        "out_of_order": call.tally.out_of_order,
        "corrupted": call.tally.corrupted,
        "unexpected": call.tally.unexpected,
    }


# --------------------------------------------------------------------------- hostile client


async def hostile(url: str, address: str) -> ClientConnection:
    return await connect(
        url,
        local_addr=(address, 0),
        compression=None,
        ping_interval=None,
        open_timeout=echo.START_TIMEOUT_S,
        max_size=2**20,
        # Read whatever comes (the echo of its frames) while it sends: with websockets' default
        # queue of 16 messages it would stop reading, never see the gateway's close frame, and
        # be dropped with 1006 after the gateway's close timeout instead.
        max_queue=None,
    )


async def closed_with(conn: ClientConnection, timeout_s: float) -> tuple[int | None, str, float]:
    """(close code, reason, seconds until closed) — (None, "still open", ...) after
    ``timeout_s``. What the gateway sends meanwhile (echo) is read and dropped."""
    began = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await conn.recv()
    except TimeoutError:
        return None, "still open", time.monotonic() - began
    return conn.close_code, conn.close_reason or "", time.monotonic() - began


async def refused_status(url: str, address: str) -> int:
    """The HTTP status of an upgrade to ``url``: 101 if it was accepted (then closed)."""
    try:
        conn = await hostile(url, address)
    except InvalidStatus as exc:
        return exc.response.status_code
    await conn.close()
    return 101


async def kernel_send_queue(local: str, peer: str) -> int | None:
    """Bytes in the kernel's send queue of the TCP socket ``local`` → ``peer`` (``ss``), or
    None."""
    try:
        ss = await asyncio.create_subprocess_exec(
            "ss",
            "-tnH",
            "src",
            local,
            "dst",
            peer,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    out, _ = await ss.communicate()
    for line in out.decode().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            return int(fields[2])
    return None


def audio_data(participant: str | None, pcm_b64: str) -> str:
    body: dict[str, Any] = {
        "timestamp": iso_time(int(time.time() * 1000)),
        "data": pcm_b64,
        "silent": False,
    }
    if participant is not None:
        body["participantRawID"] = participant
    return json.dumps({"kind": "AudioData", "audioData": body})


def code_text(code: int | None, reason: str) -> str:
    return f"{code} {reason!r}" if code is not None else reason


# --------------------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args: argparse.Namespace, lab: Lab) -> None:
        self.args = args
        self.lab = lab
        self.clock = asyncio.get_running_loop().time
        self.duration_s = args.minutes * 60
        self.rng = random.Random(args.seed)
        self.tag = f"soak-{uuid.uuid4().hex[:6]}"
        self.frames = echo.Frames(int(args.call_seconds[1] * PER_S) + 1)
        self.noise_b64 = binascii.b2a_base64(self.frames.pcm(0, 0), newline=False).decode()
        self.ticker = Ticker(self.frames)
        self.metadata = metadata_message(RATE_HZ)
        self.client = aioredis.Redis.from_url(lab.redis_url, socket_timeout=5)
        self.group = lab.keys.group("echo")
        self._index = 0
        self.t_start = 0.0
        self.t_end = 0.0
        self.aborted = ""  # why the soak stopped early
        self.abort = asyncio.Event()
        self.live: dict[str, Good] = {}  # call id → good call
        self.done: list[dict[str, Any]] = []  # every good call, once over
        self.latencies: dict[int, np.ndarray[Any, np.dtype[np.float32]]] = {}
        self.refusals: Counter[int] = Counter()  # good calls' refused upgrades, by status
        self.connect_errors: Counter[str] = Counter()
        self.refused_s: list[float] = []  # when a good call's upgrade was refused
        self.stops: list[dict[str, Any]] = []
        self.outage: dict[str, Any] = {}
        self.attacks: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.bench_errors: list[str] = []
        self.victims: dict[int, int] = {}  # attack B: victim's call index → attack number

    def at(self) -> float:
        return self.clock() - self.t_start

    def next_index(self) -> int:
        self._index += 1
        return self._index

    async def sleep_until(self, at_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.abort.wait(), max(0.0, at_s - self.at()))

    # ---------------------------------------------------------------- good calls

    async def caller(self, slot: int) -> None:
        await asyncio.sleep(slot * self.args.ramp_s / self.args.calls)
        low, high = self.args.call_seconds
        while not self.aborted:
            left = self.t_end - self.clock()
            if left < MIN_CALL_S:
                return
            try:
                await self.good_call(min(self.rng.uniform(low, high), left))
            except Exception as exc:  # the bench's own fault: said, and the calls go on
                self.bench_errors.append(f"{self.at():.1f} s: {exc!r}")

    async def good_call(self, length_s: float) -> None:
        index = self.next_index()
        good = Good(index, f"{self.tag}-{index}", int(length_s * PER_S), self.frames)
        call = good.call
        url = f"{self.lab.gateway_url}/{good.call_id}?mode=mixed"
        address = GOOD_ADDRESSES[index % len(GOOD_ADDRESSES)]
        while True:
            try:
                wire, _ = await open_wire(url, call.on_message, address)
                break
            except InvalidStatus as exc:
                self.refusals[exc.response.status_code] += 1
                self.refused_s.append(self.at())
            except (InvalidHandshake, OSError, TimeoutError) as exc:
                self.connect_errors[type(exc).__name__] += 1
            if self.aborted or self.clock() > self.t_end - MIN_CALL_S:
                return
            await asyncio.sleep(0.5)
        call.wire = wire
        good.opened_s = self.at()
        self.live[good.call_id] = good
        wire.send(self.metadata)
        self.ticker.add(good)
        try:
            await good.audio_over.wait()
            if not wire.closed.done():
                await drain(wire, call, self.ticker.silent)
        finally:
            self.ticker.remove(good)
            closed = closed_by_gateway(wire)
            if closed is None:
                await wire.close()
            del self.live[good.call_id]
            self.finish(good, closed)

    def finish(self, good: Good, closed: tuple[int, str] | None) -> None:
        call = good.call
        sent = good.seq
        sent_at = np.frombuffer(call.sent_at, dtype=np.float64)[:sent]
        recv_at = np.frombuffer(call.recv_at, dtype=np.float64)[:sent]
        latency = (recv_at - sent_at) * 1000
        self.latencies[good.index] = latency[~np.isnan(latency)].astype(np.float32)
        back = ~np.isnan(recv_at)
        lost_at = sent_at[~back] - self.t_start  # when the missing frames were sent
        # Frames missing before the last one that came back were lost; after it (the end of the
        # call) they may only have been later than the drain (an overloaded machine).
        last_back = int(np.flatnonzero(back)[-1]) if back.any() else -1
        gap = int(np.count_nonzero(~back[: last_back + 1]))
        missing_sent_s = (
            [round(float(lost_at.min()), 2), round(float(lost_at.max()), 2)]
            if lost_at.size
            else None
        )
        self.done.append(
            {
                "index": good.index,
                "id": good.call_id,
                "opened_s": round(good.opened_s, 2),
                "closed_s": round(self.at(), 2),
                "audio_s": sent / PER_S,
                **call_figures(call, sent),
                "closed_by_gateway": list(closed) if closed else None,
                "missing_sent_s": missing_sent_s,
                "missing_before_last_echo": gap,
                "stops": good.stops,
            }
        )

    # ---------------------------------------------------------------- chaos

    def schedule(self) -> list[tuple[float, str]]:
        every = self.args.chaos_every
        last = self.duration_s - 15
        events = [(every * k, "replica") for k in range(1, int(last // every) + 1)]
        if self.args.redis_restart:
            events.append((self.duration_s / 2 + every / 2, "redis"))
        return sorted(e for e in events if e[0] < last)

    async def chaos(self) -> None:
        kill = True
        for at_s, what in self.schedule():
            await self.sleep_until(at_s)
            if self.aborted:
                return
            if what == "redis":
                await self.restart_redis()
            else:
                await self.stop_replica(signal.SIGKILL if kill else signal.SIGTERM)
                kill = not kill

    async def owned_by(self, consumer: str) -> list[str]:
        """The call ids whose `started` entry ``consumer`` holds in the echo group (three tries:
        the first command after the Redis restart meets the connection Redis closed)."""
        for attempt in range(3):
            try:
                return await self._owned_by(consumer)
            except RedisError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    async def _owned_by(self, consumer: str) -> list[str]:
        rows = await self.client.xpending_range(
            self.lab.keys.calls, self.group, "-", "+", 10_000, consumername=consumer
        )
        ids: list[str] = []
        for row in rows:
            entries = cast(
                StreamEntries,
                await self.client.xrange(self.lab.keys.calls, row["message_id"], row["message_id"]),
            )
            for _, fields in entries:
                ids.append(fields[b"call_id"].decode())
        return ids

    async def stop_replica(self, how: signal.Signals) -> None:
        victims = [w for w in self.lab.workers if not w.steady]
        if not victims:
            return
        victim = min(victims, key=lambda w: w.started_s)
        action: dict[str, Any] = {"at_s": round(self.at(), 1), "replica": victim.name}
        action["signal"] = how.name
        try:
            owned = await self.owned_by(victim.name)
            victim.metrics = await asyncio.to_thread(scrape, victim.port)
        except (RedisError, OSError) as exc:
            owned = []
            action["error"] = repr(exc)
        began = self.clock()
        action["exit"] = await self.lab.stop(victim, how)
        try:
            action["replacement"] = (await self.lab.start_worker(steady=False)).name
        except RuntimeError as exc:  # it exited at start: a finding, the soak goes on
            action["replacement"] = None
            self.lab.unexpected_exits.append({"process": "replacement replica", "exit": str(exc)})
        action["calls_owned"] = len(owned)
        for call_id in owned:
            good = self.live.get(call_id)
            if good is not None:
                good.stops.append(how.name)
        took = None
        while self.clock() - began < 60:
            try:
                left = len(
                    await self.client.xpending_range(
                        self.lab.keys.calls, self.group, "-", "+", 10_000, consumername=victim.name
                    )
                )
            except RedisError:
                left = -1
            if left == 0:
                took = self.clock() - began
                break
            await asyncio.sleep(0.05)
        action["all_taken_over_s"] = None if took is None else round(took, 2)
        self.stops.append(action)
        print(
            f"  [{action['at_s']:6.1f} s] {how.name} {victim.name} ({len(owned)} calls): "
            f"exit {action['exit']}, all taken over after {action['all_taken_over_s']} s",
            flush=True,
        )

    async def restart_redis(self) -> None:
        lab = self.lab
        assert lab.redis is not None
        outage: dict[str, Any] = {"live_calls": len(self.live)}
        try:
            outage["dbsize_before"] = await self.client.dbsize()
        except RedisError as exc:
            outage["dbsize_before"] = repr(exc)
        down = self.clock()
        outage["down_s"] = round(down - self.t_start, 2)
        self.outage = outage
        outage["exit"] = await lab.stop(lab.redis, signal.SIGTERM)
        outage["stopped_after_s"] = round(self.clock() - down, 2)
        await asyncio.sleep(self.args.redis_down_s)
        await lab.start_redis()
        up = self.clock()
        outage["up_s"] = round(up - self.t_start, 2)
        outage["unavailable_s"] = round(up - down, 2)
        for _ in range(100):
            try:
                outage["dbsize_after"] = await self.client.dbsize()
                groups = await self.client.xinfo_groups(lab.keys.calls)
                outage["echo_group_kept"] = any(
                    g["name"] in (self.group, self.group.encode()) for g in groups
                )
                break
            except RedisError as exc:
                outage["dbsize_after"] = repr(exc)
                await asyncio.sleep(0.1)
        ready: dict[str, float | None] = {}
        for child in [lab.gateway, *lab.workers]:
            assert child is not None
            ready[child.name] = None
            while self.clock() - up < 60:
                try:
                    await asyncio.to_thread(
                        servers.http_get, f"http://127.0.0.1:{child.port}/readyz", 1.0
                    )
                    ready[child.name] = round(self.clock() - up, 2)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
        outage["ready_after_redis_s"] = ready
        print(
            f"  [{outage['down_s']:6.1f} s] Redis restarted: unavailable "
            f"{outage['unavailable_s']} s, {outage['live_calls']} calls live, keys "
            f"{outage['dbsize_before']} → {outage.get('dbsize_after')}, ready after: {ready}",
            flush=True,
        )

    # ---------------------------------------------------------------- memory

    async def sample(self) -> dict[str, Any]:
        lab = self.lab
        found: dict[str, Any] = {"t_s": round(self.at(), 1), "live_calls": len(self.live)}
        for child in [lab.gateway, lab.redis, *lab.workers]:
            if child is not None:
                found[child.name] = child.rss_mib()
        try:
            info = await self.client.info("memory")
            found["redis_used_memory_mib"] = int(info["used_memory"]) / 2**20
        except RedisError:
            found["redis_used_memory_mib"] = None
        return found

    async def sampler(self) -> None:
        warmup = min(30.0, self.duration_s / 4)
        times = [warmup]
        while times[-1] + 60 < self.duration_s - 5:
            times.append(times[-1] + 60)
        times.append(self.duration_s - 2)
        for at_s in times:
            await self.sleep_until(at_s)
            if self.aborted:
                return
            self.samples.append(await self.sample())

    async def monitor(self) -> None:
        while True:
            self.lab.check_exits()
            gone = {e["process"] for e in self.lab.unexpected_exits}
            if "gateway" in gone and not self.aborted:
                self.aborted = "the gateway exited"
                self.abort.set()
                print(f"ABORTED: {self.aborted}", file=sys.stderr, flush=True)
            await asyncio.sleep(1.0)

    # ---------------------------------------------------------------- attacks

    async def attacker(self) -> None:
        at_s = self.args.attack_first
        number = 0
        while at_s + ATTACK_ROUND_S < self.duration_s:
            await self.sleep_until(at_s)
            if self.aborted:
                return
            await self.attack_round(number)
            number += 1
            at_s += self.args.attack_every

    async def attack_round(self, number: int) -> None:
        url = self.lab.gateway_url
        tag = f"{self.tag}-r{number}"

        async def one_after_another() -> None:
            for name, expected, attack in [
                ("D participants cycling past the cap", f"1008 {CROWD_REASON!r}", self.crowd),
                (
                    "D five participants cycling, 10 s",
                    "not closed; its echo exact and in order",
                    self.five_ids,
                ),
                ("E 60 000-character participantRawID", f"1007 '…{LONG_FIELD}…'", self.bloated),
                ("E sender 20× faster than real time", f"1008 {FAST_REASON!r}", self.flood),
                (
                    f"E socket {PER_ADDRESS + 1} from one address",
                    "HTTP 429 at the upgrade",
                    self.crowded_address,
                ),
                (
                    "A id of an ended call used again",
                    "a new call (id~2): its caller hears its own audio, none of the old",
                    self.reuse,
                ),
                (
                    "B id of a live call",
                    "HTTP 409 at the upgrade; the live call loses nothing",
                    self.duplicate,
                ),
                ("H lone surrogate, escaped", "1007 (malformed)", self.surrogate),
                ("H lone surrogate, raw bytes", "1007 (not UTF-8)", self.raw_surrogate),
            ]:
                await self.attack(number, name, expected, attack(url, tag))

        await asyncio.gather(
            self.attack(
                number,
                f"C {IDLE_SOCKETS} sockets: AudioMetadata, then nothing",
                f"1008 {IDLE_REASON!r} each; none published as a call",
                self.idle_sockets(url, tag),
            ),
            self.attack(
                number,
                f"E client that never reads, {NEVER_READ_S:g} s at most",
                "1008 'not reading' after CS_EGRESS_STALL_TIMEOUT_S (10 s), counted not_reading;"
                " a client reading nothing is cut after the close timeout (10 s)",
                self.never_reads(url, tag),
            ),
            one_after_another(),
        )

    async def attack(
        self,
        number: int,
        name: str,
        expected: str,
        attack: Coroutine[Any, Any, tuple[bool, str, dict[str, Any]]],
    ) -> None:
        began = self.at()
        try:
            ok, observed, details = await attack
        except Exception as exc:
            ok, observed, details = False, f"bench error: {exc!r}", {}
        result = {
            "round": number,
            "attack": name,
            "expected": expected,
            "observed": observed,
            "ok": ok,
            "start_s": round(began, 1),
            "end_s": round(self.at(), 1),
            **details,
        }
        self.attacks.append(result)
        mark = "ok" if ok else "NOT AS DOCUMENTED"
        print(f"  [{began:6.1f} s] {name}: {observed} ({mark})", flush=True)

    async def idle_sockets(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        ids = [f"idle-{tag}-{i}" for i in range(IDLE_SOCKETS)]
        conns: list[ClientConnection] = []
        quiet_since: list[float] = []  # when each sent its AudioMetadata (its last message)
        try:
            for call_id in ids:
                conn = await hostile(f"{url}/{call_id}?mode=mixed", IDLE_ADDRESS)
                conns.append(conn)
                await conn.send(self.metadata)
                quiet_since.append(time.monotonic())
            waited = time.monotonic()
            outcomes = await asyncio.gather(*(closed_with(c, IDLE_TIMEOUT_S + 15) for c in conns))
        finally:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        closes = Counter((code, reason) for code, reason, _ in outcomes)
        published = 0
        for call_id in ids:
            published += await self.client.exists(self.lab.keys.call_in(call_id))
            published += await self.client.exists(self.lab.keys.call_events(call_id))
        seconds = [
            waited + after - since for (*_, after), since in zip(outcomes, quiet_since, strict=True)
        ]
        observed = (
            ", ".join(f"{code_text(c, r)} ×{n}" for (c, r), n in closes.items())
            + f", {min(seconds):.1f}-{max(seconds):.1f} s after their AudioMetadata; "
            + f"{published} published"
        )
        ok = closes == Counter({(1008, IDLE_REASON): IDLE_SOCKETS}) and published == 0
        return ok, observed, {}

    async def crowd(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        conn = await hostile(f"{url}/crowd-{tag}?mode=unmixed", HOSTILE_ADDRESS)
        sent = 0
        with contextlib.suppress(ConnectionClosed):
            await conn.send(self.metadata)
            for n in range(MAX_PARTICIPANTS + 6):
                await conn.send(audio_data(f"8:acs:crowd-{n}", self.noise_b64))
                sent += 1
                await asyncio.sleep(FRAME_S)
        code, reason, _ = await closed_with(conn, 10)
        observed = f"{code_text(code, reason)} after {sent} frames"
        return (code, reason) == (1008, CROWD_REASON), observed, {}

    async def five_ids(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        call = echo.Call(self.next_index(), self.frames, echo.Tally())
        wire, _ = await open_wire(
            f"{url}/five-{tag}?mode=unmixed", call.on_message, HOSTILE_ADDRESS
        )
        call.wire = wire
        wire.send(self.metadata)
        count = 10 * PER_S
        open_ = await stream(
            wire,
            call,
            self.frames,
            count,
            lambda message, seq: with_participant(message, f"8:acs:five-{seq % 5}"),
        )
        if open_:
            await drain(wire, call, silent_message("8:acs:five-0"))
        closed = closed_by_gateway(wire)
        open_ = closed is None
        await wire.close()
        figures = call_figures(call, call.sent)
        # Documented: under the cap, the call goes on. Its echo is reported (on an overloaded
        # machine part of it can still be on its way when the drain ends).
        ok = open_ and not any(figures[k] for k in ("corrupted", "out_of_order", "unexpected"))
        observed = (
            f"{'closed ' + str(closed) if closed else 'not closed'}; "
            f"{figures['echoed']}/{figures['sent']} echoed, {figures['duplicated']} twice, "
            f"{figures['out_of_order']} out of order, {figures['corrupted']} corrupted"
        )
        return ok, observed, {}

    async def bloated(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        conn = await hostile(f"{url}/bloated-{tag}?mode=unmixed", HOSTILE_ADDRESS)
        with contextlib.suppress(ConnectionClosed):
            await conn.send(self.metadata)
            await conn.send(audio_data("8:acs:ok", self.noise_b64))
            await conn.send(audio_data("x" * 60_000, self.noise_b64))
        code, reason, _ = await closed_with(conn, 10)
        return code == 1007 and LONG_FIELD in reason, code_text(code, reason), {}

    async def flood(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        conn = await hostile(f"{url}/flood-{tag}?mode=mixed", HOSTILE_ADDRESS)
        frame = audio_data(None, self.noise_b64)
        sent = 0
        began = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            await conn.send(self.metadata)
            while sent < 300_000:
                for _ in range(10):  # 1 000 a second: 20 × real time
                    await conn.send(frame)
                    sent += 1
                await asyncio.sleep(0.01)
        code, reason, _ = await closed_with(conn, 10)
        took = time.monotonic() - began
        observed = f"{code_text(code, reason)} after {sent} messages in {took:.1f} s"
        return (code, reason) == (1008, FAST_REASON), observed, {}

    async def crowded_address(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        conns: list[ClientConnection] = []
        try:
            for i in range(PER_ADDRESS):
                conns.append(await hostile(f"{url}/near-{tag}-{i}?mode=mixed", CROWD_ADDRESS))
            status = await refused_status(f"{url}/near-{tag}-more?mode=mixed", CROWD_ADDRESS)
        finally:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        return status == 429, f"{len(conns)} accepted, then HTTP {status}", {}

    async def reuse(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        call_id = f"reuse-{tag}"
        first = echo.Call(self.next_index(), self.frames, echo.Tally())
        wire, _ = await open_wire(f"{url}/{call_id}?mode=mixed", first.on_message, HOSTILE_ADDRESS)
        first.wire = wire
        wire.send(self.metadata)
        await stream(wire, first, self.frames, 3 * PER_S)
        await wire.close()  # at once: its echo is still on its way
        second = echo.Call(self.next_index(), self.frames, echo.Tally())
        heard_old = 0

        def on_message(message: str) -> None:
            nonlocal heard_old
            with contextlib.suppress(ValueError, TypeError, binascii.Error):
                data = echo.data_of(message)
                if data is not None:
                    header = binascii.a2b_base64(data[: echo.HEADER_B64])
                    if echo.HEADER.unpack(header)[1] == first.index:
                        heard_old += 1
            second.on_message(message)

        conflicts = 0
        while True:
            try:
                wire, _ = await open_wire(
                    f"{url}/{call_id}?mode=mixed", on_message, HOSTILE_ADDRESS
                )
                break
            except InvalidStatus as exc:  # 409 until the first call's end is processed
                if exc.response.status_code != 409 or conflicts >= 50:
                    raise
                conflicts += 1
                await asyncio.sleep(0.1)
        second.wire = wire
        wire.send(self.metadata)
        open_ = await stream(wire, second, self.frames, 3 * PER_S)
        if open_:
            await drain(wire, second, self.ticker.silent)
        open_ = closed_by_gateway(wire) is None
        await wire.close()
        published = await self.client.exists(self.lab.keys.call_events(f"{call_id}~2"))
        figures = call_figures(second, second.sent)
        ok = open_ and heard_old == 0 and figures["corrupted"] == 0 and published == 1
        observed = (
            f"second call heard {heard_old} frames of the first; its own "
            f"{figures['echoed']}/{figures['sent']} echoed ({figures['corrupted']} corrupted); "
            f"published as {call_id}~2: {'yes' if published else 'NO'}; "
            f"{conflicts} × 409 while the first call ended"
        )
        return ok, observed, {"first_call_echoed_before_hangup": first.received}

    async def duplicate(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        del tag
        candidates = [
            g
            for g in self.ticker.live()
            if g.frames_n - g.seq > 3 * PER_S and g.call.wire and not g.call.wire.closed.done()
        ]
        if not candidates:
            return False, "no live call to attack", {}
        victim = self.rng.choice(candidates)
        status = await refused_status(f"{url}/{victim.call_id}?mode=mixed", HOSTILE_ADDRESS)
        self.victims[victim.index] = len(self.attacks)
        return status == 409, f"HTTP {status}", {"victim": victim.index}

    async def surrogate(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        conn = await hostile(f"{url}/surrogate-{tag}?mode=unmixed", HOSTILE_ADDRESS)
        with contextlib.suppress(ConnectionClosed):
            await conn.send(self.metadata)
            await conn.send(audio_data("8:acs:ok", self.noise_b64))
            await conn.send(audio_data("\ud800", self.noise_b64))  # json.dumps escapes it
        code, reason, _ = await closed_with(conn, 10)
        return code == 1007, code_text(code, reason), {}

    async def raw_surrogate(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        conn = await hostile(f"{url}/raw-surrogate-{tag}?mode=unmixed", HOSTILE_ADDRESS)
        raw = (
            audio_data("SURROGATE", self.noise_b64).encode().replace(b"SURROGATE", b"\xed\xa0\x80")
        )
        with contextlib.suppress(ConnectionClosed):
            await conn.send(self.metadata)
            await conn.send(audio_data("8:acs:ok", self.noise_b64))
            await conn.send(raw, text=True)
        code, reason, _ = await closed_with(conn, 10)
        return code == 1007, code_text(code, reason), {}

    async def never_reads(self, url: str, tag: str) -> tuple[bool, str, dict[str, Any]]:
        """Streams real-time frames (echoed back) and never reads its socket (receive buffer
        4 KiB), so the gateway's writes back up: how long the gateway keeps it, what it holds
        meanwhile (its RSS, and the kernel's send queue of its end of the socket)."""
        gateway = self.lab.gateway
        assert gateway is not None
        call = echo.Call(self.next_index(), self.frames, echo.Tally())
        wire, transport = await open_wire(
            f"{url}/deaf-{tag}?mode=mixed", call.on_message, NEVER_READ_ADDRESS, rcvbuf=4096
        )
        call.wire = wire
        transport.pause_reading()
        client_port = transport.get_extra_info("sockname")[1]
        gateway_end = (f"127.0.0.1:{gateway.port}", f"{NEVER_READ_ADDRESS}:{client_port}")
        rss0 = gateway.rss_mib()
        rejects0 = await self.not_reading_rejects()
        clock = self.clock
        began = clock()
        wire.send(self.metadata)
        dropped_after = None
        send_queue: list[int] = []
        for seq in range(min(int(NEVER_READ_S * PER_S), self.frames.count)):
            delay = began + seq * FRAME_S - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if wire.closed.done() or not wire.send(self.frames.message(call.index, seq)):
                dropped_after = clock() - began
                break
            if seq % (5 * PER_S) == 0:
                queued = await kernel_send_queue(*gateway_end)
                if queued is not None:
                    send_queue.append(queued)
        rss1 = gateway.rss_mib()
        with contextlib.suppress(RuntimeError):
            transport.resume_reading()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(wire.closed), 15)
        code, reason = closed_by_gateway(wire) or (None, "")
        if not wire.closed.done():
            await wire.close()
        growth = None if rss0 is None or rss1 is None else rss1 - rss0
        most = max(send_queue, default=None)
        counted = await self.not_reading_rejects() - rejects0
        observed = (
            (
                f"dropped by the gateway after {dropped_after:.0f} s"
                if dropped_after is not None
                else f"still open after {NEVER_READ_S:g} s"
            )
            + f" (close {code} {reason!r} seen by the client), {counted:g} counted "
            + "not_reading; gateway RSS "
            + f"{'-' if growth is None else f'{growth:+.1f}'} MiB meanwhile, its kernel send "
            + f"queue to the socket up to {'-' if most is None else f'{most / 2**20:.2f}'} MiB"
        )
        details = {
            "gateway_rss_growth_mib": growth,
            "dropped_after_s": dropped_after,
            "gateway_kernel_send_queue_bytes": send_queue,
        }
        # Not counted when the gateway's metrics could not be read (NaN): judged on the drop.
        return dropped_after is not None and not counted < 1, observed, details

    async def not_reading_rejects(self) -> float:
        gateway = self.lab.gateway
        assert gateway is not None
        try:
            samples = await asyncio.to_thread(scrape, gateway.port, 30.0)
        except OSError:  # an overloaded gateway: not counted
            return math.nan
        return samples.get('callstream_ingress_rejects_total{reason="not_reading"}', 0.0)

    # ---------------------------------------------------------------- the run

    async def run(self) -> dict[str, Any]:
        self.t_start = self.clock()
        self.t_end = self.t_start + self.duration_s
        print(
            f"[soak] {self.args.calls} calls for {self.args.minutes:g} min; chaos "
            f"{self.schedule()}; logs in {self.lab.logs}",
            flush=True,
        )
        gateway = self.lab.gateway
        assert gateway is not None
        gateway_server = servers.Server("gateway", gateway.proc.pid, gateway.port)
        cpu0 = (echo.machine_busy_s(), time.process_time(), gateway_server.cpu_seconds())
        ticker = asyncio.create_task(self.ticker.run())
        monitor = asyncio.create_task(self.monitor())
        try:
            await asyncio.gather(
                *(self.caller(slot) for slot in range(self.args.calls)),
                self.chaos(),
                self.attacker(),
                self.sampler(),
            )
        except BaseException:
            monitor.cancel()
            raise
        finally:
            self.ticker.running = False
            await ticker
        wall = self.at()
        cpu1 = (echo.machine_busy_s(), time.process_time(), gateway_server.cpu_seconds())
        # The machine is shared: what it did in all, and what the generator and gateway took.
        cpu_pct = {
            name: round(100 * (end - start) / wall, 1)
            for name, start, end in zip(
                ("machine_busy", "generator_and_attacker", "gateway"), cpu0, cpu1, strict=True
            )
        }
        cpu_pct["cores"] = os.cpu_count() or 0
        # Every call the workers took is finished once its end is read.
        pending_at_end = None
        waited = self.clock()
        while self.clock() - waited < 90 and not self.aborted:
            try:
                pending_at_end = (await self.client.xpending(self.lab.keys.calls, self.group))[
                    "pending"
                ]
            except RedisError:
                pending_at_end = None
            if pending_at_end == 0:
                break
            await asyncio.sleep(0.5)
        pending_wait = self.clock() - waited
        self.lab.check_exits()
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        for child in [self.lab.gateway, *self.lab.workers]:
            if child is not None and not child.stopping:
                with contextlib.suppress(OSError):
                    child.metrics = await asyncio.to_thread(scrape, child.port)
        result = self.results()
        result["cpu_pct_while_calls_ran"] = cpu_pct
        result["echo_group_pending_after_the_end"] = {
            "calls": pending_at_end,
            "after_s": round(pending_wait, 1),
        }
        return result

    # ---------------------------------------------------------------- results

    def lost_redis(self, call: dict[str, Any]) -> bool:
        if not self.outage:
            return False
        down = self.outage["down_s"]
        up = self.outage.get("up_s", math.inf)
        return bool(call["opened_s"] <= up and call["closed_s"] >= down)

    def results(self) -> dict[str, Any]:
        lab = self.lab
        strict = [c for c in self.done if not self.lost_redis(c)]
        lost = [c for c in self.done if self.lost_redis(c)]

        def totals(calls: list[dict[str, Any]]) -> dict[str, Any]:
            keys = ("sent", "echoed", "missing", "duplicated", "out_of_order", "corrupted")
            found: dict[str, Any] = {"calls": len(calls)}
            for key in (*keys, "unexpected"):
                found[key] = sum(c[key] for c in calls)
            found["closed_by_gateway"] = dict(
                Counter(
                    f"{c['closed_by_gateway'][0]} {c['closed_by_gateway'][1] or ''}".strip()
                    for c in calls
                    if c["closed_by_gateway"]
                )
            )
            found["missing_before_last_echo"] = sum(c["missing_before_last_echo"] for c in calls)
            found["calls_with_missing"] = sum(1 for c in calls if c["missing"])
            found["calls_with_duplicates"] = sum(1 for c in calls if c["duplicated"])
            return found

        latency = [self.latencies[c["index"]] for c in strict if c["index"] in self.latencies]
        joined = np.concatenate(latency) if latency else np.zeros(0, dtype=np.float32)
        echo_ms = (
            {
                "p50": float(np.percentile(joined, 50)),
                "p99": float(np.percentile(joined, 99)),
                "max": float(joined.max()),
            }
            if joined.size
            else None
        )
        duplicates_unexplained = [
            c["index"] for c in strict if c["duplicated"] and "SIGKILL" not in c["stops"]
        ]
        # Attacks: judged unless they overlapped the Redis outage; B also by its victim.
        by_index = {c["index"]: c for c in self.done}
        for attack in self.attacks:
            attack["judged"] = not self._near_outage(attack["start_s"], attack["end_s"])
            victim = attack.get("victim")
            if victim is not None:
                outcome = by_index.get(victim)
                if outcome is None:
                    attack["victim_outcome"] = "unknown"
                else:
                    attack["victim_outcome"] = {
                        k: outcome[k] for k in ("missing", "duplicated", "closed_by_gateway")
                    }
                    if not self.lost_redis(outcome):
                        attack["ok"] = attack["ok"] and not (
                            outcome["missing"] or outcome["closed_by_gateway"]
                        )
            attack["good_calls_hurt_meanwhile"] = sum(
                1
                for c in strict
                if c["opened_s"] <= attack["end_s"]
                and c["closed_s"] >= attack["start_s"]
                and (c["missing"] or c["closed_by_gateway"] or c["corrupted"])
            )
        first, last = (self.samples[0], self.samples[-1]) if self.samples else ({}, {})
        memory: dict[str, Any] = {}
        for name in sorted({k for s in self.samples for k in s} - {"t_s", "live_calls"}):
            seen = [(s["t_s"], s[name]) for s in self.samples if s.get(name) is not None]
            if seen:
                memory[name] = {
                    "first_s": seen[0][0],
                    "first": round(seen[0][1], 2),
                    "last_s": seen[-1][0],
                    "last": round(seen[-1][1], 2),
                    "growth": round(seen[-1][1] - seen[0][1], 2),
                    "max": round(max(v for _, v in seen), 2),
                }
        worker_counts: Counter[str] = Counter()
        for child in lab.every_worker:
            for key, value in picked(child.metrics, "callstream_worker_calls_").items():
                if "_total{" in key:
                    worker_counts[key.removeprefix("callstream_worker_calls_")] += int(value)
        gateway_metrics = lab.gateway.metrics if lab.gateway is not None else {}
        lateness = np.asarray(self.ticker.lateness_ms)
        result: dict[str, Any] = {
            "calls": self.args.calls,
            "minutes": self.args.minutes,
            "call_seconds": list(self.args.call_seconds),
            "echo_replicas": self.args.echo_replicas,
            "steady_replicas": self.args.steady_replicas,
            "heartbeat_s": HEARTBEAT_S,
            "gateway_env": {k: v for k, v in lab.env.items() if k != "CS_PREFIX"},
            "aborted": self.aborted or None,
            "calls_done": len(self.done),
            "did_not_lose_redis": totals(strict),
            "lost_redis": totals(lost),
            "echo_latency_ms_did_not_lose_redis": echo_ms,
            "duplicates_without_a_sigkill": duplicates_unexplained,
            "good_upgrades_refused": {str(k): v for k, v in sorted(self.refusals.items())},
            "good_upgrades_refused_between_s": [
                round(min(self.refused_s), 1),
                round(max(self.refused_s), 1),
            ]
            if self.refused_s
            else None,
            "good_connect_errors": dict(self.connect_errors),
            "stops": self.stops,
            "takeovers": sum(s.get("calls_owned", 0) for s in self.stops),
            "redis_restart": self.outage or None,
            "attacks": self.attacks,
            "memory_mib": memory,
            "memory_samples": self.samples,
            "memory_first_sample_s": first.get("t_s"),
            "memory_last_sample_s": last.get("t_s"),
            "worker_counters": dict(worker_counts),
            "gateway_rejects": {
                k.split('reason="')[1].rstrip('"}'): int(v)
                for k, v in picked(gateway_metrics, "callstream_ingress_rejects_total{").items()
            },
            "gateway_counters": {
                k: v
                for k, v in gateway_metrics.items()
                if k.startswith(
                    (
                        "callstream_ingress_calls_total",
                        "callstream_ingress_frames_total",
                        "callstream_ingress_publish_errors_total",
                        "callstream_egress_frames_sent_total",
                        "callstream_egress_schedule_restarts_total",
                        "callstream_egress_send_failures_total",
                        "callstream_egress_redis_errors_total",
                    )
                )
            },
            "generator_lateness_ms": {
                "p50": float(np.percentile(lateness, 50)),
                "p99": float(np.percentile(lateness, 99)),
                "max": float(lateness.max()),
            }
            if lateness.size
            else None,
            "unexpected_exits": lab.unexpected_exits,
            "bench_errors": self.bench_errors,
            "problem_calls": [
                c
                for c in self.done
                if c["missing"] or c["duplicated"] or c["closed_by_gateway"] or c["corrupted"]
            ],
        }
        return result

    def _near_outage(self, start_s: float, end_s: float) -> bool:
        if not self.outage:
            return False
        down: float = self.outage["down_s"] - OUTAGE_MARGIN_S
        up: float = self.outage.get("up_s", math.inf) + OUTAGE_MARGIN_S
        return start_s <= up and end_s >= down


def verdict(results: dict[str, Any]) -> list[str]:
    """Why the soak failed (empty: it passed)."""
    why = []
    strict = results["did_not_lose_redis"]
    for key in ("missing", "corrupted", "out_of_order", "unexpected"):
        if strict[key]:
            why.append(f"{strict[key]} frames {key.replace('_', ' ')} in calls that kept Redis")
    if strict["missing"]:
        gap = strict.get("missing_before_last_echo", "?")
        why.append(
            f"  of which {gap} before their call's last echo (lost); the others were not back "
            f"{DRAIN_S:g} s after the call's last frame (late, or lost)"
        )
    if strict["closed_by_gateway"]:
        why.append(f"calls that kept Redis closed by the gateway: {strict['closed_by_gateway']}")
    if results["duplicates_without_a_sigkill"]:
        why.append(
            "frames echoed twice in calls no SIGKILL touched: "
            f"{results['duplicates_without_a_sigkill']}"
        )
    for attack in results["attacks"]:
        if attack["judged"] and not attack["ok"]:
            why.append(
                f"attack {attack['attack']!r} (round {attack['round']}): {attack['observed']}"
            )
    for exit_ in results["unexpected_exits"]:
        why.append(f"{exit_['process']} exited with {exit_['exit']} at {exit_.get('at_s')} s")
    for stop in results["stops"]:
        if stop["signal"] == "SIGTERM" and stop["exit"] != 0:
            why.append(f"{stop['replica']} exited {stop['exit']} on SIGTERM")
    for name, code in results.get("shutdown_exits", {}).items():
        if name != "redis-server" and code != 0:
            why.append(f"{name} exited {code} on SIGTERM at the end")
    if results.get("bench_errors"):
        why.append(f"the bench failed: {results['bench_errors'][:3]}")
    if results.get("aborted"):
        why.append(f"aborted: {results['aborted']}")
    return why


# --------------------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    lines = [""]

    def row(label: str, value: Any) -> None:
        lines.append(f"{label:52}{value}")

    strict, lost = results["did_not_lose_redis"], results["lost_redis"]
    row("calls / minutes", f"{results['calls']} / {results['minutes']:g}")
    row("calls done (each replaced by a new call)", results["calls_done"])
    for label, group in (("kept Redis", strict), ("lost Redis", lost)):
        row(
            f"{label}: calls, frames sent / echoed",
            f"{group['calls']}, {group['sent']} / {group['echoed']}",
        )
        row(
            "  missing / twice / out of order / corrupt",
            f"{group['missing']} / {group['duplicated']} / {group['out_of_order']} / "
            f"{group['corrupted']}",
        )
        row(
            "  of the missing, before the call's last echo",
            group.get("missing_before_last_echo", "-"),
        )
        row("  closed by the gateway", group["closed_by_gateway"] or "none")
    latency = results["echo_latency_ms_did_not_lose_redis"]
    if latency:
        row(
            "echo latency p50 / p99 / max ms (kept Redis)",
            f"{latency['p50']:.0f} / {latency['p99']:.0f} / {latency['max']:.0f}",
        )
    row("frames twice without a SIGKILL (calls)", results["duplicates_without_a_sigkill"] or "none")
    row("good upgrades refused (status: count)", results["good_upgrades_refused"] or "none")
    kills = [s for s in results["stops"] if s["signal"] == "SIGKILL"]
    terms = [s for s in results["stops"] if s["signal"] == "SIGTERM"]
    row("replica stops: SIGKILL / SIGTERM", f"{len(kills)} / {len(terms)}")
    row("  calls their replica held (to be taken over)", results["takeovers"])
    counters = results["worker_counters"]
    row(
        "  calls taken by failover, counted by the replicas",
        counters.get('taken_total{how="failover",kind="echo"}', "-"),
    )
    for label, stops in (("after SIGKILL", kills), ("after SIGTERM", terms)):
        took = [s["all_taken_over_s"] for s in stops if s["all_taken_over_s"] is not None]
        if took:
            row(f"  all taken over {label}, s", f"{min(took):.2f}-{max(took):.2f}")
    row("  SIGTERM exit codes", sorted({str(s["exit"]) for s in terms}) or "-")
    restart = results["redis_restart"]
    if restart:
        row(
            "Redis restart at / unavailable s",
            f"{restart['down_s']:.0f} / {restart.get('unavailable_s')}",
        )
        row(
            "  keys before / after, echo group kept",
            f"{restart.get('dbsize_before')} / {restart.get('dbsize_after')}, "
            f"{restart.get('echo_group_kept')}",
        )
        row("  ready again after Redis, s", restart.get("ready_after_redis_s"))
    row("good upgrades refused between s", results["good_upgrades_refused_between_s"])
    pending = results["echo_group_pending_after_the_end"]
    row(
        "calls still owned by workers after the end", f"{pending['calls']} ({pending['after_s']} s)"
    )
    row("gateway rejects by reason", results["gateway_rejects"])
    lateness = results["generator_lateness_ms"]
    if lateness:
        row(
            "generator lateness p50 / p99 / max ms",
            f"{lateness['p50']:.1f} / {lateness['p99']:.1f} / {lateness['max']:.0f}",
        )
    cpu = results.get("cpu_pct_while_calls_ran")
    if cpu:
        row(
            "CPU %: machine (all cores) / generator / gateway",
            f"{cpu['machine_busy']:.0f} of {100 * cpu['cores']} / "
            f"{cpu['generator_and_attacker']:.0f} / {cpu['gateway']:.0f}",
        )
    lines.append("")
    lines.append(
        f"memory MiB, first sample ({results['memory_first_sample_s']} s) → last "
        f"({results['memory_last_sample_s']} s):"
    )
    for name, mem in results["memory_mib"].items():
        lines.append(
            f"  {name:40} {mem['first']:8.1f} ({mem['first_s']:5.0f} s) → {mem['last']:8.1f} "
            f"({mem['last_s']:5.0f} s)  {mem['growth']:+7.1f}  max {mem['max']:.1f}"
        )
    lines.append("")
    lines.append("attacks:")
    for attack in results["attacks"]:
        mark = "ok" if attack["ok"] else "NOT AS DOCUMENTED"
        if not attack["judged"]:
            mark += " (not judged: Redis outage)"
        lines.append(f"  r{attack['round']} {attack['attack']}: {attack['observed']} — {mark}")
    for exit_ in results["unexpected_exits"]:
        lines.append(f"UNEXPECTED EXIT: {exit_}")
    return "\n".join(lines)


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    pair = (float(low), float(high or low))
    if not 0 < pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH seconds, got {text!r}")
    return pair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (10)")
    parser.add_argument(
        "--call-seconds",
        type=_seconds_range,
        default=(30.0, 120.0),
        help="each call's length, uniform in LOW-HIGH seconds (default 30-120)",
    )
    parser.add_argument(
        "--echo-replicas", type=int, default=2, help="echo replicas stopped in turn (default 2)"
    )
    parser.add_argument(
        "--steady-replicas", type=int, default=1, help="echo replicas never stopped (default 1)"
    )
    parser.add_argument(
        "--max-calls", type=int, default=None, help="each replica's --max-calls (max(calls, 250))"
    )
    parser.add_argument(
        "--chaos-every", type=float, default=60.0, help="seconds between replica stops (60)"
    )
    parser.add_argument(
        "--no-redis-restart",
        dest="redis_restart",
        action="store_false",
        help="do not restart Redis in the middle",
    )
    parser.add_argument(
        "--redis-down-s", type=float, default=2.0, help="Redis stays down this long (2)"
    )
    parser.add_argument(
        "--attack-every", type=float, default=100.0, help="seconds between attack rounds (100)"
    )
    parser.add_argument(
        "--attack-first", type=float, default=40.0, help="the first round's start, s (40)"
    )
    parser.add_argument(
        "--ramp-s", type=float, default=10.0, help="the first calls start over this long (10)"
    )
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument("--json", help="also write every figure to this file")


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    workdir = tempfile.mkdtemp(prefix="bench-soak-")
    max_calls = args.max_calls if args.max_calls is not None else max(args.calls, 250)
    lab = Lab(workdir, max_calls)
    results: dict[str, Any] = {}
    run: Soak | None = None
    try:
        await lab.start_redis()
        for _ in range(args.echo_replicas):
            await lab.start_worker(steady=False)
        for _ in range(args.steady_replicas):
            await lab.start_worker(steady=True)
        await lab.start_gateway()
        run = Soak(args, lab)
        results = await run.run()
    finally:
        if run is not None:
            await run.client.aclose()
        await lab.shutdown()
        results["shutdown_exits"] = lab.shutdown_exits
        shutil.rmtree(lab.data, ignore_errors=True)
    if args.keep_logs or verdict(results):
        results["logs"] = lab.logs  # kept: what the processes said
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.minutes <= 0:
        print("--calls must be at least 1 and --minutes positive", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(soak(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: subprocesses stopped", file=sys.stderr)
        return 130
    finally:
        echo.kill_leftovers()
    print(report(results))
    failures = verdict(results)
    results["failures"] = failures
    results["passed"] = not failures
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
            out.write("\n")
    if failures:
        print("FAILED:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print("passed")
    return 0
