"""``callstream tail`` as a process against a real Redis: what it prints of ``cs:insights``,
its filters, where it starts, its exits on SIGINT/SIGTERM, and a Redis restart survived.

Every wait is on the process's output, bounded; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from callstream.shared.events import Event
from callstream.shared.settings import Settings
from tests.helpers import RedisProcess, example_event

TIMEOUT_S = 15.0
CALL = "tail-a"
OTHER = "tail-b"


@dataclass
class TailProcess:
    proc: asyncio.subprocess.Process

    async def line(self, timeout_s: float = TIMEOUT_S) -> str:
        """The next line it prints (without its newline)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            raw = await self.proc.stdout.readline()
        assert raw, f"tail exited ({await self._stderr()})"
        return raw.decode().rstrip("\n")

    async def lines(self, count: int, timeout_s: float = TIMEOUT_S) -> list[str]:
        return [await self.line(timeout_s) for _ in range(count)]

    async def stderr_line(self, timeout_s: float = TIMEOUT_S) -> str:
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout_s):
            return (await self.proc.stderr.readline()).decode().rstrip("\n")

    async def stop(self, sig: signal.Signals = signal.SIGINT) -> tuple[int, str]:
        """Send ``sig``; its exit code and the rest of its stderr."""
        self.proc.send_signal(sig)
        async with asyncio.timeout(TIMEOUT_S):
            code = await self.proc.wait()
        return code, await self._stderr()

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        async with asyncio.timeout(TIMEOUT_S):
            return (await self.proc.stderr.read()).decode()


def tail_process(redis_url: str, prefix: str, *args: str) -> AsyncContextManager[TailProcess]:
    return tail_with({"REDIS_URL": redis_url, "CS_PREFIX": prefix}, *args)


@contextlib.asynccontextmanager
async def tail_with(env: Mapping[str, str], *args: str) -> AsyncIterator[TailProcess]:
    """``callstream tail ARGS`` with ``env`` added to the environment (and TZ=UTC); killed at
    the end if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "tail",
        *args,
        env={**os.environ, **env, "TZ": "UTC"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield TailProcess(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def utterance(call: str, key: str = "1:5960") -> str:
    return f"{call}:transcript:{key}"


def conversation(call: str) -> list[Event]:
    """A call's events as its publishers make them: lifecycle, a partial and its final, an
    insight about it, a tone, the end."""
    return [
        example_event(call, "call.started"),
        example_event(
            call,
            "transcript",
            key="1:5960:partial:800",
            text="please transfer",
            resultStatus="Intermediate",
        ),
        example_event(call, "transcript", key="1:5960"),
        example_event(call, "nlp.sentiment", key="1:5960", utterance=utterance(call)),
        example_event(call, "dtmf", key="412"),
        example_event(call, "call.ended"),
        example_event(call, "transcribe.done"),
    ]


def dtmf(call: str, seq: int) -> Event:
    return example_event(call, "dtmf", key=str(seq))


async def publish(redis: aioredis.Redis, key: str, *events: Event) -> None:
    for event in events:
        await redis.xadd(key, event.fields())


async def test_json_prints_each_event_once_in_stream_order_and_sigint_exits_0(
    redis: aioredis.Redis, settings: Settings
) -> None:
    ours, theirs = conversation(CALL), conversation(OTHER)
    events = [e for pair in zip(ours, theirs, strict=True) for e in pair]
    await publish(redis, settings.keys.insights, *events, ours[2])  # the final, twice
    async with tail_process(settings.redis_url, settings.prefix, "--json", "--from-start") as tail:
        assert await tail.lines(len(events)) == [e.to_json() for e in events]
        later = dtmf(CALL, 413)
        await publish(redis, settings.keys.insights, later)
        assert await tail.line() == later.to_json()  # the duplicate was not printed
        code, stderr = await tail.stop(signal.SIGINT)
    assert code == 0
    assert stderr == ""  # no traceback


async def test_filters_by_exact_call_id_and_type_patterns(
    redis: aioredis.Redis, settings: Settings
) -> None:
    reused = f"{CALL}~2"  # the second call that used the id: another call
    events = conversation(CALL) + conversation(reused) + conversation(OTHER)
    await publish(redis, settings.keys.insights, *events)
    async with tail_process(
        settings.redis_url,
        settings.prefix,
        "--json",
        "--from-start",
        "--call",
        CALL,
        "--type",
        "dtmf,nlp.*",
        "--type",
        "*.done",
    ) as tail:
        wanted = [e for e in events if e.call_id == CALL and e.type in WANTED_TYPES]
        assert await tail.lines(len(wanted)) == [e.to_json() for e in wanted]
        # Nothing else came before this one: the others were filtered out.
        await publish(redis, settings.keys.insights, dtmf(reused, 500), dtmf(CALL, 501))
        assert await tail.line() == dtmf(CALL, 501).to_json()
        code, _ = await tail.stop()
    assert code == 0


WANTED_TYPES = {"dtmf", "nlp.sentiment", "transcribe.done"}


async def test_by_default_only_events_published_after_it_started_are_shown(
    redis: aioredis.Redis, settings: Settings
) -> None:
    old = dtmf(CALL, 1)
    await publish(redis, settings.keys.insights, old)
    async with tail_process(settings.redis_url, settings.prefix, "--json") as tail:
        # It says nothing when it is ready: publish until a tone comes out.
        published: list[Event] = []
        first = None
        for seq in range(100, 300):
            published.append(dtmf(CALL, seq))
            await publish(redis, settings.keys.insights, published[-1])
            with contextlib.suppress(TimeoutError):
                first = await tail.line(timeout_s=0.2)
                break
        assert first is not None, "tail printed nothing"
        shown = [e.to_json() for e in published]
        assert first != old.to_json()
        assert first in shown
        # Everything after the first one it showed comes, in order, nothing skipped.
        rest = shown[shown.index(first) + 1 :]
        assert await tail.lines(len(rest)) == rest
        last = dtmf(CALL, 999)
        await publish(redis, settings.keys.insights, last)
        assert await tail.line() == last.to_json()
        code, _ = await tail.stop()
    assert code == 0


async def test_people_see_finals_and_insights_off_a_terminal_and_sigterm_exits_0(
    redis: aioredis.Redis, settings: Settings
) -> None:
    await publish(redis, settings.keys.insights, *conversation(CALL), *conversation(OTHER))
    async with tail_process(
        settings.redis_url, settings.prefix, "--from-start", "--call", CALL
    ) as tail:
        lines = await tail.lines(6)
        code, stderr = await tail.stop(signal.SIGTERM)
    assert lines == [
        f"09:26:47  call started 16 kHz unmixed ({CALL})",
        "09:26:56  4:+14255550123: please transfer me to the billing department",
        "09:26:56      ↳ sentiment negative (-0.62, rolling -0.31)",
        "09:26:55  dtmf 5 (4:+14255550123)",
        "09:30:02  call ended normal, 9763 frames",
        "09:30:02  transcribe done (normal)",
    ]
    assert code == 0
    assert stderr == ""


async def test_a_closed_stdout_ends_it_quietly(redis: aioredis.Redis, settings: Settings) -> None:
    """``callstream tail | head -1``: once the reader is gone it exits 0, saying nothing, even
    while no event comes to be written."""
    await publish(redis, settings.keys.insights, *conversation(CALL))
    read_fd, write_fd = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "tail",
        "--from-start",
        env={**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix},
        stdout=write_fd,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_fd)
    try:
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb")
        )
        async with asyncio.timeout(TIMEOUT_S):
            assert b"call started" in await reader.readline()
        transport.close()  # as head does after its first line
        assert proc.stderr is not None
        async with asyncio.timeout(TIMEOUT_S):
            code = await proc.wait()
            stderr = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    assert stderr == ""


@pytest.mark.timeout(60)
async def test_it_goes_on_after_redis_restarts_empty(private_redis: RedisProcess) -> None:
    key = "tailtest:insights"
    before = dtmf(CALL, 1)
    client = aioredis.Redis.from_url(private_redis.url)
    await publish(client, key, before)
    await client.aclose()
    async with tail_process(private_redis.url, "tailtest", "--json", "--from-start") as tail:
        assert await tail.line() == before.to_json()
        private_redis.kill()
        assert "redis unavailable" in await tail.stderr_line()
        private_redis.start()  # empty: it keeps nothing on disk
        client = aioredis.Redis.from_url(private_redis.url)
        try:
            # A stream begun again may get ids lower than the last one read (another server's
            # clock): tail reads a stream that is gone, or ends before that id, from its start.
            after = [dtmf(CALL, 2), dtmf(CALL, 3)]
            await client.xadd(key, after[0].fields(), id="1-1")
            assert await tail.line() == after[0].to_json()
            await publish(client, key, after[1])
            assert await tail.line() == after[1].to_json()
            assert "redis is back" in await tail.stderr_line()
        finally:
            await client.aclose()
        code, stderr = await tail.stop()
    assert code == 0
    assert stderr == ""
