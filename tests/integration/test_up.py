"""``callstream up`` run as a user runs it: a process that runs the gateway and the workers as
processes of their own (real Redis, real sockets), with one log and a status on its stdout (a
pipe here, so the status comes as lines, without colours); Ctrl-C (SIGINT) drains the gateway,
then stops the workers, and everything is gone when it exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from callstream.demo import speech_frames, synth_talker
from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.simulate import simulate
from callstream.speech import piper_available, say
from tests.helpers import events, free_port, wait_for_entry

RATE = 16000
SAID = "hello i would like to check the balance of my account"
NAME_WIDTH = len("transcribe-1")  # the widest name: the prefix column's width
STARTED = re.compile(r"^up +\| started (\S+): pid (\d+), metrics http://127\.0\.0\.1:(\d+)/metrics")


def spoken() -> bytes:
    """``SAID`` read aloud, with half a second before and a second and a half after."""
    audio = bytes(RATE) + say(SAID, RATE) + bytes(3 * RATE)
    return audio + bytes((-len(audio)) % (RATE // 50 * 2))


class Output:
    """A process's output lines as they come, and waits for one that matches."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._new = asyncio.Event()

    async def read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode().rstrip("\n"))
            self._new.set()
        self.ended = True
        self._new.set()

    async def wait_for(
        self, matches: Callable[[str], bool], timeout_s: float, *, after: int = 0
    ) -> int:
        """The index of the first line from the ``after``-th on, already there or to come,
        that ``matches`` (AssertionError after ``timeout_s`` or when the output ends without
        one)."""
        seen = after
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for index in range(seen, len(self.lines)):
                        if matches(self.lines[index]):
                            return index
                    seen = len(self.lines)
                    if self.ended:
                        break
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            pass
        raise AssertionError("no such line; the output ends:\n" + self.tail())

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def is_final_of(call_id: str) -> Callable[[dict[bytes, bytes]], bool]:
    def matches(fields: dict[bytes, bytes]) -> bool:
        if fields.get(b"type") != b"transcript":
            return False
        event = Event.from_fields(fields)
        return event.call_id == call_id and event.data["resultStatus"] == "Final"

    return matches


@contextlib.asynccontextmanager
async def up_process(settings: Settings, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``callstream up ARGS``; killed at the end if the test left it running (failed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "up",
        *args,
        env={**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()  # its children get SIGTERM from Linux (PR_SET_PDEATHSIG)
            await proc.wait()


@pytest.mark.timeout(120)
async def test_up_runs_every_kind_shows_its_status_and_drains_on_ctrl_c(
    settings: Settings, redis: aioredis.Redis
) -> None:
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    audio = await asyncio.to_thread(spoken)
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    output = Output()
    async with up_process(
        settings,
        "--transcribe",
        "2",
        "--nlp",
        "1",
        "--echo",
        "1",
        "--port",
        str(port),
        "--status-interval",
        "0.2",
    ) as proc:
        assert proc.stdout is not None
        reader = asyncio.create_task(output.read(proc.stdout))
        ready = output.lines[await output.wait_for(lambda line: " | ready — " in line, 60)]
        assert "5 processes: gateway, echo-1, transcribe-1, transcribe-2, nlp-1" in ready
        await output.wait_for(lambda line: f"callstream simulate {url} --wav" in line, 10)
        before = len(output.lines)

        # A spoken call: echoed back exactly, transcribed, the transcript on {prefix}:insights.
        [result] = await simulate(url, [audio], rate_hz=RATE, call_ids=["up-1"], linger_s=3.0)
        assert result.error is None
        assert result.close_code == 1000
        sent = speech_frames(audio, RATE)
        assert len(sent) > 50
        assert speech_frames(result.recording, RATE) == sent
        await wait_for_entry(redis, settings.keys.insights, is_final_of("up-1"), 60)
        # The status showed the call served, by the gateway and one replica of each kind
        # (which transcribe replica took it is up to them) ...
        serving = await output.wait_for(
            lambda line: (
                "status: gateway 1 call |" in line
                and "echo pending 1 lag 0 (echo-1: 1)" in line
                and "nlp pending 1 lag 0 (nlp-1: 1)" in line
                and re.search(
                    r"transcribe pending 1 lag 0 \(transcribe-1: [01], transcribe-2: [01]\)", line
                )
                is not None
            ),
            30,
            after=before,
        )
        line = output.lines[serving]
        assert ("transcribe-1: 1" in line) != ("transcribe-2: 1" in line), line
        assert line.startswith(f"{'up':<{NAME_WIDTH}} | ")
        # ... then every kind done with it.
        await output.wait_for(
            lambda line: (
                "status: gateway 0 calls" in line
                and "echo pending 0 lag 0 (echo-1: 0)" in line
                and "transcribe pending 0 lag 0 (transcribe-1: 0, transcribe-2: 0)" in line
                and "nlp pending 0 lag 0 (nlp-1: 0)" in line
            ),
            60,
            after=serving + 1,
        )

        # A second call, live when Ctrl-C comes: the gateway drains (the workers keep
        # serving it) and it ends normally, echoed whole; then everything stops.
        talker = synth_talker(RATE, 3.0, (0.2, 2.6), 160.0, seed=7)
        call = asyncio.create_task(
            simulate(url, [talker], rate_hz=RATE, call_ids=["up-2"], linger_s=3.0)
        )
        await wait_for_entry(redis, settings.keys.call_in("up-2"), lambda _: True, 30)
        proc.send_signal(signal.SIGINT)
        [live] = await call
        assert live.error is None
        assert live.close_code == 1000  # not 1001: it ended by itself within the drain
        assert speech_frames(live.recording, RATE) == speech_frames(talker, RATE)
        async with asyncio.timeout(90):
            code = await proc.wait()
        await reader
        assert code == 0, output.tail()
    # The workers finished the call before they stopped (nobody else would have): its nlp
    # summary, the last thing any kind publishes of it, is there.
    insights = await events(redis, settings.keys.insights)
    summaries = [e.call_id for e in insights if e.type == "nlp.summary"]
    assert summaries.count("up-2") == 1

    lines = output.lines
    text = "\n".join(lines)
    assert "\x1b[" not in text  # no colours, no redrawing into a pipe
    # Each process's own lines carry its name.
    for name in ("gateway", "echo-1", "transcribe-1", "transcribe-2", "nlp-1"):
        assert any(line.startswith(f"{name:<{NAME_WIDTH}} | ") for line in lines), name
    # The gateway stopped (drained) before the workers were told to stop.
    order = [line.split(" | ", 1)[1] for line in lines if line.startswith("up ")]
    assert order.index("gateway exited 0") < order.index(
        "stopping the workers: they hand their calls back"
    )
    assert order[-1] == "stopped: all 5 processes exited 0"
    # Nothing is left: no process, nothing listening on the call port or a metrics port.
    started = [m.groups() for m in map(STARTED.match, lines) if m]
    assert sorted(name for name, _, _ in started) == sorted(
        ["gateway", "echo-1", "transcribe-1", "transcribe-2", "nlp-1"]
    )
    for name, pid, metrics_port in started:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
        assert not listening(int(metrics_port)), name
    assert not listening(port)
