"""The ACS call emulator against servers of its own, and the CLI against real processes."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import sys
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Response

from callstream.demo import synth_talker
from callstream.emulator.wav import load_wav, write_wav
from callstream.shared.audio import chunk, is_silent
from callstream.shared.errors import ProtocolError
from callstream.shared.events import parse_iso_ms
from callstream.shared.protocols.acs import AudioData, AudioMetadata, DtmfData, InboundSession
from callstream.shared.settings import Settings
from callstream.simulate import simulate
from tests.helpers import gateway_process, worker_process

RATE = 16000
SPELLINGS = [
    '{{"Kind":"AudioData","AudioData":{{"Data":"{}"}},"StopAudio":null}}',
    '{{"kind":"AudioData","audioData":{{"data":"{}"}}}}',
    '{{"kind":"audioData","audioData":{{"data":"{}","isSilent":false}},"stopAudio":{{}}}}',
]


class EchoBot:
    """A bot written the way ACS samples are: echoes speech in every outbound spelling."""

    def __init__(self, *, stop_after: int | None = None, close_with: int | None = None) -> None:
        self.received: list[object] = []
        self.stop_after = stop_after
        self.close_with = close_with

    async def handle(self, conn: ServerConnection) -> None:
        session = InboundSession()
        echoed = 0
        async for message in conn:
            try:
                parsed = session.receive(message)
            except ProtocolError:
                await conn.close(1007, "bad message")
                return
            self.received.append(parsed)
            if isinstance(parsed, AudioData) and self.close_with is not None:
                await conn.close(self.close_with, "policy says no")
                return
            if isinstance(parsed, AudioData) and not parsed.silent:
                data = base64.b64encode(parsed.pcm).decode()
                await conn.send(SPELLINGS[echoed % 3].format(data))
                await conn.send("garbage that is not JSON")
                echoed += 1
                if echoed == self.stop_after:
                    await conn.send('{"kind":"stopAudio","stopAudio":{}}')


@pytest.fixture
async def bot_url() -> AsyncIterator[tuple[str, EchoBot]]:
    bot = EchoBot()
    async with serve(bot.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/bot", bot


def speech(pcm: bytes) -> list[bytes]:
    return [f for f in chunk(pcm, 640) if not is_silent(f)]


async def test_calls_look_like_acs_and_every_outbound_spelling_plays(
    bot_url: tuple[str, EchoBot],
) -> None:
    url, bot = bot_url
    talker = synth_talker(RATE, 2.0, (0.1, 1.8), 150.0, seed=9)
    [result] = await simulate(url, [talker], dtmf=[("5#", 0.5)], linger_s=1.0)
    assert result.completed
    assert isinstance(bot.received[0], AudioMetadata)
    frames = [m for m in bot.received if isinstance(m, AudioData)]
    assert len(frames) == result.frames_sent == 100
    assert b"".join(f.pcm for f in frames) == talker
    assert [f.participant_raw_id for f in frames] == [None] * 100  # mixed: no participant
    stamps = [f.timestamp for f in frames]
    assert stamps[0] is not None
    assert stamps[1] is not None
    times = [parse_iso_ms(s or "") for s in stamps]
    assert all(b - a == 20 for a, b in itertools.pairwise(times) if a and b)
    assert [m.tone for m in bot.received if isinstance(m, DtmfData)] == ["5", "#"]
    assert speech(result.recording) == speech(talker)
    assert result.unknown_messages == len(speech(talker))  # the garbage after each echo
    assert result.latencies_ms
    assert max(result.latencies_ms) < 1000


async def test_stop_audio_drops_what_is_queued() -> None:
    bot = EchoBot(stop_after=30)
    async with serve(bot.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        tone = synth_talker(RATE, 2.0, (0.0, 2.0), 200.0, seed=3)
        [result] = await simulate(f"ws://127.0.0.1:{port}", [tone], linger_s=0.5)
    assert result.stops_received == 1
    assert result.frames_received == len(speech(tone))


async def test_unmixed_sends_a_tagged_stream_per_participant(
    bot_url: tuple[str, EchoBot],
) -> None:
    url, bot = bot_url
    talkers = [synth_talker(24000, 1.0, (0.1, 0.9), 120.0 + 60 * i, seed=i) for i in range(3)]
    silent = bytes(len(talkers[0]))
    [result] = await simulate(
        url, [talkers[0], silent, talkers[2]], rate_hz=24000, mode="unmixed", linger_s=0.5
    )
    assert result.completed
    frames = [m for m in bot.received if isinstance(m, AudioData)]
    assert len(frames) == 3 * 50
    by_participant: dict[str | None, list[AudioData]] = {}
    for frame in frames:
        by_participant.setdefault(frame.participant_raw_id, []).append(frame)
    ids = list(by_participant)
    assert len(ids) == 3
    assert str(ids[0]).startswith("8:acs:")
    assert str(ids[1]).startswith("4:+1")
    assert all(f.silent for f in by_participant[ids[1]])
    assert b"".join(f.pcm for f in by_participant[ids[2]]) == talkers[2]


async def test_a_reply_after_the_callers_speech_is_measured_as_a_turn() -> None:
    """A bot that answers once the caller fell silent: one turn, its reply measured."""

    async def answer(conn: ServerConnection) -> None:
        session, spoke, quiet, answered = InboundSession(), False, 0, False
        async for message in conn:
            parsed = session.receive(message)
            if isinstance(parsed, AudioData):
                spoke = spoke or not parsed.silent
                quiet = quiet + 1 if parsed.silent else 0
                if spoke and quiet == 25 and not answered:  # 0.5 s of silence after speech
                    answered = True
                    data = base64.b64encode(bytes(640 * 5) + b"\x10\x27" * 320 * 20).decode()
                    await conn.send(SPELLINGS[1].format(data))

    talker = synth_talker(RATE, 2.0, (0.2, 1.0), 150.0, seed=4)
    before_ms = time.time() * 1000
    async with serve(answer, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        [result] = await simulate(f"ws://127.0.0.1:{port}", [talker], linger_s=1.0)
    assert result.completed
    assert before_ms <= result.started_at_ms <= time.time() * 1000
    [turn] = result.turns
    assert 0.1 < turn.onset_s < turn.end_s < 1.5
    assert not turn.talked_over
    assert turn.reply_ms is not None
    assert turn.reply_ms > 0
    assert turn.stop_ms is None
    assert result.summary()["turns"][0]["reply_ms"] == turn.reply_ms


async def test_a_server_closing_with_an_error_fails_the_call() -> None:
    bot = EchoBot(close_with=1008)
    async with serve(bot.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        [result] = await simulate(f"ws://127.0.0.1:{port}", [bytes(32000)], linger_s=0.2)
    assert not result.completed
    assert (result.close_code, result.close_reason) == (1008, "policy says no")
    assert result.frames_sent < 100


async def test_a_refused_upgrade_is_a_clear_error() -> None:
    def refuse(conn: ServerConnection, request: object) -> Response:
        return conn.respond(401, "token expired\n")

    async with serve(EchoBot().handle, "127.0.0.1", 0, process_request=refuse) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        [result] = await simulate(f"ws://127.0.0.1:{port}", [bytes(3200)])
    assert not result.completed
    assert result.error == "server refused the call: HTTP 401 Unauthorized: token expired"


# ------------------------------------------------------------------ the CLI, real processes


async def test_cli_call_through_gateway_and_worker_processes(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix}
    async with gateway_process(settings) as url, worker_process(settings, "echo"):
        talker = synth_talker(48000, 1.5, (0.1, 1.3), 170.0, seed=5)
        write_wav(str(tmp_path / "in.wav"), talker, 48000)
        sim = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callstream",
            "simulate",
            url,
            "--wav",
            str(tmp_path / "in.wav"),
            "--rate",
            "24000",
            "--record",
            str(tmp_path / "out.wav"),
            "--report",
            str(tmp_path / "r.json"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, _ = await sim.communicate()
        assert sim.returncode == 0, out.decode()
        assert "1/1 calls completed" in out.decode()
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["total"]["frames_sent"] == 75
        assert report["total"]["completed"] == 1
        with wave.open(str(tmp_path / "out.wav")) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
            played = wav.readframes(wav.getnframes())
        with wave.open(str(tmp_path / "in.wav")) as wav:
            assert wav.getnframes() == len(talker) // 2
        sent = load_wav(str(tmp_path / "in.wav"), 24000)
        assert [f for f in chunk(played, 960) if not is_silent(f)] == [
            f for f in chunk(sent, 960) if not is_silent(f)
        ]
