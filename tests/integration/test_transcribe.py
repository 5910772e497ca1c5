"""Speech made with espeak-ng, streamed through gateway + transcribe worker (real Redis, real
sockets), against the same engine decoding the whole file offline."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from callstream.emulator.wav import load_wav
from callstream.ingress.server import Gateway
from callstream.shared.entries import (
    CallStarted,
    InEnd,
    InFrame,
    StreamEntries,
    encode_call,
    encode_in,
)
from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.simulate import participant_ids, simulate
from callstream.workers.runtime import WorkerRuntime
from callstream.workers.stt.engine import RecognizerFailed
from callstream.workers.stt.pocketsphinx_engine import pocketsphinx_factory
from callstream.workers.stt.transcript import (
    SPEECH_STARTED,
    SPEECH_STOPPED,
    TICKS_PER_MS,
    TRANSCRIPT,
)
from callstream.workers.transcribe import Outgoing, Transcriber, transcribe_factory
from tests.helpers import events as read_events
from tests.helpers import free_port, until, wait_for_entry, wait_for_event, word_error_rate

RATE = 16000
FRAME = RATE // 50 * 2
SENTENCES = (
    "hello i would like to check the balance of my account",
    "please transfer me to the billing department",
)
GAP_S = 1.5


def speak(text: str, path: Path, rate: int = RATE) -> bytes:
    espeak = shutil.which("espeak-ng")
    assert espeak is not None, "espeak-ng is needed (./dev installs it)"
    if not path.exists():
        subprocess.run([espeak, "-s", "150", "-w", str(path), text], check=True)
    return load_wav(str(path), rate)


def onset_ms(pcm: bytes, rate: int = RATE) -> int:
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    return int(np.argmax(samples > 300)) * 1000 // rate


def compose(tmp: Path, rate: int) -> tuple[bytes, list[int]]:
    """1 s of silence, sentence, 1.5 s, sentence, 1 s; and where each sentence's speech starts."""
    audio = bytearray(bytes(rate * 2))
    onsets = []
    for i, text in enumerate(SENTENCES):
        clip = speak(text, tmp / f"s{i}.wav", rate)
        onsets.append(len(audio) * 1000 // (rate * 2) + onset_ms(clip, rate))
        audio += clip + bytes(int(rate * 2 * GAP_S))
    audio += bytes((-len(audio)) % (rate // 50 * 2))
    return bytes(audio), onsets


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="module")
def call_audio(speech_dir: Path) -> tuple[bytes, list[int]]:
    return compose(speech_dir, RATE)


def in_frames(audio: bytes, rate: int = RATE, start_ms: int = 0) -> list[InFrame]:
    """The frames a mixed call of ``audio`` publishes, stamped from ``start_ms``."""
    frame = rate // 50 * 2
    return [
        InFrame(i, start_ms + 20 * i, "", 0, False, audio[i * frame : (i + 1) * frame])
        for i in range(len(audio) // frame)
    ]


def offline(audio: bytes, rate: int = RATE) -> list[Outgoing]:
    core = Transcriber("offline", rate, pocketsphinx_factory)
    frames = [(f"{f.seq + 1}-0", f) for f in in_frames(audio, rate)]
    return core.process(frames, ended=True)


async def into_an_utterance(
    redis: aioredis.Redis, events_key: str, heard_ms: int, timeout_s: float
) -> None:
    """Until an intermediate result says the worker has heard ``heard_ms`` of an utterance."""
    await wait_for_entry(
        redis,
        events_key,
        lambda f: (
            f[b"type"] == TRANSCRIPT.encode()
            and Event.from_fields(f).data["duration"] >= heard_ms * TICKS_PER_MS
        ),
        timeout_s,
    )


_E = TypeVar("_E", Event, Outgoing)


def finals(events: list[_E]) -> list[_E]:
    return [e for e in events if e.type == TRANSCRIPT and e.data["resultStatus"] == "Final"]


@pytest.fixture
async def pipeline(settings: Settings) -> AsyncIterator[Gateway]:
    async with (
        Gateway(settings) as gateway,
        WorkerRuntime(
            settings, "transcribe", transcribe_factory(pocketsphinx_factory), heartbeat_s=0.5
        ) as worker,
    ):
        yield gateway
        await worker.wait_idle()


@pytest.mark.parametrize("rate", [16000, 24000])
async def test_streamed_transcripts_match_the_offline_decode_and_the_true_positions(
    pipeline: Gateway, settings: Settings, redis: aioredis.Redis, speech_dir: Path, rate: int
) -> None:
    """A 24 kHz call reaches the engine at 24 kHz (PocketSphinx resamples it itself)."""
    audio, onsets = compose(speech_dir, rate)
    expected = await asyncio.to_thread(offline, audio, rate)
    [result] = await simulate(pipeline.url, [audio], rate_hz=rate, call_ids=["stt"], linger_s=0.1)
    assert result.completed
    key = settings.keys.call_events("stt")
    await wait_for_event(redis, key, "transcribe.done", timeout_s=30)  # all is published
    events = [e for e in await read_events(redis, key) if e.type != "transcribe.done"]

    got, want = finals(events), finals(expected)
    assert len(want) == len(SENTENCES)  # the offline decode found both utterances
    assert [e.data["text"] for e in got] == [e.data["text"] for e in want]
    heard = " ".join(e.data["text"] for e in got)
    reference = " ".join(e.data["text"] for e in want)
    assert word_error_rate(reference, heard) <= 0.02
    # Each utterance starts where its speech starts (100-ns ticks from the call's first frame).
    for event, true_ms in zip(got, onsets, strict=True):
        assert abs(event.data["offset"] / TICKS_PER_MS - true_ms) <= 100
        assert event.data["format"] == "display"
        assert event.data["words"]
        assert event.data["participantRawID"] == ""
    # Speech events bracket each utterance; every event id is unique (stable ids).
    kinds = [e.type for e in events if e.type in (SPEECH_STARTED, SPEECH_STOPPED)]
    assert kinds == [SPEECH_STARTED, SPEECH_STOPPED] * len(SENTENCES)
    assert len({e.id for e in events}) == len(events)
    insights = await read_events(redis, settings.keys.insights)
    assert {e.id for e in events} <= {e.id for e in insights}


async def test_a_call_handed_over_mid_utterance_is_transcribed_whole_once(
    settings: Settings, redis: aioredis.Redis, call_audio: tuple[bytes, list[int]]
) -> None:
    """Replica A stops (SIGTERM's hand-back) in the middle of the first sentence; B resumes
    from A's checkpoint, which lies before that utterance: every final equals the offline
    decode (text and offset, though the stream's first frames are trimmed away), none is cut
    or missing, and no final id appears with two different texts."""
    audio, onsets = call_audio
    expected = finals(await asyncio.to_thread(offline, audio))
    frames = in_frames(audio, start_ms=1_700_000_000_000)
    cut = (onsets[0] + 1500) // 20  # 1.5 s into the first sentence
    key = settings.keys.call_in("moved")
    await redis.xadd(
        settings.keys.calls,
        encode_call(CallStarted("moved", RATE, "mixed", int(time.time() * 1000), "test")),
    )

    def replica(name: str) -> WorkerRuntime:
        return WorkerRuntime(
            settings,
            "transcribe",
            transcribe_factory(pocketsphinx_factory),
            consumer=name,
            heartbeat_s=0.2,
        )

    a = replica("a")
    await a.__aenter__()
    await _add(redis, key, frames[:cut])
    # A is a second into the first utterance (its partial results say so), not at its end.
    await into_an_utterance(redis, settings.keys.call_events("moved"), 800, 20)
    await a.aclose()
    # A long call's stream has lost its head to MAXLEN by now: B must count offsets from the
    # call's first frame all the same, not from the first one left.
    head = await xrange_head(redis, key, 10)
    await redis.xtrim(key, minid=head[-1][0], approximate=False)
    assert (await xrange_head(redis, key, 1))[0][0] == head[-1][0]  # the first nine are gone
    async with replica("b") as b:
        await _add(redis, key, frames[cut:])
        await redis.xadd(key, encode_in(InEnd("normal")))

        async def taken() -> bool:
            return "moved" in b.owned

        await until(taken, timeout_s=20)
        await b.wait_idle()

    events = await read_events(redis, settings.keys.call_events("moved"))
    got: dict[str, tuple[int, str]] = {}
    for event in finals(events):
        heard = (event.data["offset"], event.data["text"])
        assert got.setdefault(event.id, heard) == heard  # a repeated id says the same
    assert list(got.values()) == [(e.data["offset"], e.data["text"]) for e in expected]


async def test_an_unmixed_call_attributes_each_utterance_to_its_speaker(
    pipeline: Gateway,
    settings: Settings,
    redis: aioredis.Redis,
    tmp_path: Path,
) -> None:
    """Two participants take turns; each final transcript carries the speaker's raw id and
    equals that speaker's own stream decoded offline."""
    first = speak(SENTENCES[0], tmp_path / "a.wav")
    second = speak(SENTENCES[1], tmp_path / "b.wav")
    pause = bytes(RATE * 2)
    talker_a = pause + first + pause + bytes(len(second)) + pause
    talker_b = pause + bytes(len(first)) + pause + second + pause
    talker_a += bytes((-len(talker_a)) % FRAME)
    talker_b += bytes((-len(talker_b)) % FRAME)
    ids = participant_ids(2)
    want = [
        (ids[0], [e.data["text"] for e in finals(await asyncio.to_thread(offline, talker_a))]),
        (ids[1], [e.data["text"] for e in finals(await asyncio.to_thread(offline, talker_b))]),
    ]
    [result] = await simulate(
        pipeline.url, [talker_a, talker_b], mode="unmixed", call_ids=["turns"], linger_s=0.1
    )
    assert result.completed
    key = settings.keys.call_events("turns")

    async def both_stopped() -> bool:
        events = await read_events(redis, key)
        return sum(e.type == SPEECH_STOPPED for e in events) >= 2

    await until(both_stopped, timeout_s=30)
    got = [
        (e.data["participantRawID"], [e.data["text"]])
        for e in finals(await read_events(redis, key))
    ]
    assert got == want


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_three_replicas_survive_the_owner_stopping_mid_utterance(
    settings: Settings,
    redis: aioredis.Redis,
    call_audio: tuple[bytes, list[int]],
    stop: signal.Signals,
) -> None:
    """Three `callstream worker transcribe` processes; the one that owns the call gets SIGKILL
    (or SIGTERM, and then exits 0) 1.5 s into a sentence. Another takes the call over within
    5 s and the transcripts come out whole: each final once (by id), equal to the offline
    decode."""
    audio, onsets = call_audio
    expected = finals(await asyncio.to_thread(offline, audio))
    frames = in_frames(audio, start_ms=1_700_000_000_000)
    cut = (onsets[0] + 1500) // 20
    key = settings.keys.call_in("killed")
    replicas = {name: await transcribe_replica(settings, name, 0.3) for name in ("r1", "r2", "r3")}
    group = settings.keys.group("transcribe")
    try:

        async def all_listening() -> bool:
            names = {client["name"] for client in await redis.client_list()}
            return {f"callstream-worker-transcribe-{name}" for name in replicas} <= names

        await until(all_listening, timeout_s=30)
        await redis.xadd(
            settings.keys.calls,
            encode_call(CallStarted("killed", RATE, "mixed", int(time.time() * 1000), "test")),
        )
        await _add(redis, key, frames[:cut])
        await into_an_utterance(redis, settings.keys.call_events("killed"), 800, 30)
        [pending] = await redis.xpending_range(settings.keys.calls, group, "-", "+", 10)
        owner = _text(pending["consumer"])

        async def checkpointed() -> bool:  # the owner has saved where to resume, mid-call
            ckpt = await redis.hgetall(settings.keys.checkpoint("transcribe", "killed"))
            return ckpt.get(b"owner") == owner.encode() and ckpt.get(b"entry_id") != b"0-0"

        await until(checkpointed)
        killed_at = time.monotonic()
        replicas[owner].send_signal(stop)
        async with asyncio.timeout(10):  # SIGTERM: hand back, then exit 0 within a bound
            code = await replicas[owner].wait()
        assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)

        async def taken_over() -> bool:
            rows = await redis.xpending_range(settings.keys.calls, group, "-", "+", 10)
            return bool(rows) and _text(rows[0]["consumer"]) != owner

        await until(taken_over, timeout_s=10)
        assert time.monotonic() - killed_at <= 5.0
        await _add(redis, key, frames[cut:])
        await redis.xadd(key, encode_in(InEnd("normal")))

        async def done() -> bool:
            return not await redis.xpending_range(settings.keys.calls, group, "-", "+", 10)

        await until(done, timeout_s=60)
    finally:
        for process in replicas.values():
            if process.returncode is None:
                process.kill()
                await process.wait()
    events = await read_events(redis, settings.keys.call_events("killed"))
    got: dict[str, tuple[int, str]] = {}
    for event in finals(events):
        heard = (event.data["offset"], event.data["text"])
        assert got.setdefault(event.id, heard) == heard
    assert list(got.values()) == [(e.data["offset"], e.data["text"]) for e in expected]


async def test_a_new_owner_does_not_publish_again_what_the_dead_one_published(
    settings: Settings, redis: aioredis.Redis, call_audio: tuple[bytes, list[int]]
) -> None:
    """The owner publishes the first sentence's final and dies before it saved a checkpoint
    past it (its heartbeat is 30 s): the new owner hears that sentence again, from the call's
    start, and publishes its final no second time. Every final id once, all equal to the
    offline decode."""
    audio, _ = call_audio
    expected = finals(await asyncio.to_thread(offline, audio))
    frames = in_frames(audio, start_ms=1_700_000_000_000)
    key = settings.keys.call_in("replayed")
    first = await transcribe_replica(settings, "slow-heart", 30.0)
    second = None
    try:
        await redis.xadd(
            settings.keys.calls,
            encode_call(CallStarted("replayed", RATE, "mixed", int(time.time() * 1000), "test")),
        )
        await _add(redis, key, frames)
        first_final = f"replayed:{TRANSCRIPT}:{expected[0].key}"
        await wait_for_entry(
            redis,
            settings.keys.call_events("replayed"),
            lambda f: f[b"id"] == first_final.encode(),
            30,
        )
        first.kill()
        await first.wait()
        second = await transcribe_replica(settings, "quick-heart", 0.3)
        await redis.xadd(key, encode_in(InEnd("normal")))
        group = settings.keys.group("transcribe")

        async def done() -> bool:
            return not await redis.xpending_range(settings.keys.calls, group, "-", "+", 10)

        await until(done, timeout_s=60)
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
    published = finals(await read_events(redis, settings.keys.call_events("replayed")))
    ids = [event.id for event in published]
    assert len(ids) == len(set(ids)), ids  # the first sentence's final came out once
    assert [(e.data["offset"], e.data["text"]) for e in published] == [
        (e.data["offset"], e.data["text"]) for e in expected
    ]


async def test_a_live_call_is_transcribed_before_a_backlog_of_calls_that_ended_unserved(
    settings: Settings, redis: aioredis.Redis, call_audio: tuple[bytes, list[int]]
) -> None:
    """The outage of issue 9: forty calls began and ended while no transcribe replica ran.
    A replica (room for four calls) started then takes a live call arriving after them at
    once, and transcribes it to its end while the backlog waits (before, it decoded every
    ended call first, at full CPU, and the live call waited minutes)."""
    audio, _ = call_audio
    frames = in_frames(audio)
    backlog = [f"missed-{i}" for i in range(40)]
    now_ms = int(time.time() * 1000)
    for call_id in backlog:
        await redis.xadd(
            settings.keys.calls, encode_call(CallStarted(call_id, RATE, "mixed", now_ms, "test"))
        )
        await _add(redis, settings.keys.call_in(call_id), frames)
        await redis.xadd(settings.keys.call_in(call_id), encode_in(InEnd("normal")))
    replica = await transcribe_replica(settings, "r1", 0.3, "--max-calls", "4")
    try:
        live_key = settings.keys.call_in("live")
        started = await redis.xadd(
            settings.keys.calls,
            encode_call(CallStarted("live", RATE, "mixed", int(time.time() * 1000), "test")),
        )
        await _add(redis, live_key, frames[:50])

        async def live_taken() -> bool:
            try:
                rows = await redis.xpending_range(
                    settings.keys.calls, settings.keys.group("transcribe"), started, started, 1
                )
            except ResponseError:  # NOGROUP: the replica has not made its group yet
                return False
            return bool(rows)

        await until(live_taken, timeout_s=60)
        await _add(redis, live_key, frames[50:])
        await redis.xadd(live_key, encode_in(InEnd("normal")))
        await wait_for_event(redis, settings.keys.call_events("live"), "transcribe.done", 60)
        served = [
            call_id
            for call_id in backlog
            if await redis.hget(settings.keys.checkpoint("transcribe", call_id), "done") == b"1"
        ]
        assert len(served) < len(backlog) // 2, served
        events = await read_events(redis, settings.keys.call_events("live"))
        assert finals(events)  # it was transcribed
    finally:
        replica.kill()
        await replica.wait()


async def transcribe_replica(
    settings: Settings, name: str, heartbeat_s: float, *args: str
) -> asyncio.subprocess.Process:
    """A `callstream worker transcribe` process named ``name`` in the group (``args``: more
    options)."""
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "worker",
        "transcribe",
        "--consumer",
        name,
        "--heartbeat-s",
        str(heartbeat_s),
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def xrange_head(redis: aioredis.Redis, key: str, count: int) -> StreamEntries:
    return cast(StreamEntries, await redis.xrange(key, count=count))


async def _add(redis: aioredis.Redis, key: str, frames: list[InFrame]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for frame in frames:
            pipe.xadd(key, encode_in(frame))
        await pipe.execute()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_the_azure_engine_fails_at_startup_with_one_clear_line() -> None:
    """Missing credentials, and a service that cannot be reached: exit 2 with one line each,
    before any call is taken (the real service is not reachable from the test machine)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CS_AZURE_SPEECH_")}
    closed_port = free_port()
    for extra, message in (
        ({}, "the azure engine needs CS_AZURE_SPEECH_KEY and CS_AZURE_SPEECH_REGION"),
        (
            {
                "CS_AZURE_SPEECH_KEY": "not-a-key",
                "CS_AZURE_SPEECH_ENDPOINT": f"ws://127.0.0.1:{closed_port}/speech",
            },
            "Azure Speech (ws://127.0.0.1:",
        ),
    ):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callstream",
            "worker",
            "transcribe",
            "--engine",
            "azure",
            env={**base, **extra},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        lines = stderr.decode().strip().splitlines()
        assert process.returncode == 2
        assert len(lines) == 1, lines
        assert message in lines[0]
        assert "Traceback" not in stderr.decode()


async def test_an_azure_session_cancelled_mid_call_fails_the_call_for_a_retry() -> None:
    """Azure ends a session with an error (here: the endpoint refuses the connection): the
    recognizer says so from its next call instead of hearing nothing for the rest of the call,
    so the runtime retries the call from its checkpoint with a new session."""
    from callstream.workers.stt.azure_engine import AzureRecognizer, AzureSpeechSettings  # noqa: PLC0415

    endpoint = f"ws://127.0.0.1:{free_port()}/speech"
    recognizer = AzureRecognizer(RATE, AzureSpeechSettings("not-a-key", None, endpoint, "en-US"))

    def a_second_of_audio_then_the_end() -> None:
        recognizer.start(0, 0)
        for _ in range(50):  # audio makes the SDK connect; it is refused
            recognizer.feed(bytes(FRAME))
        recognizer.close()  # waits (bounded) for the session's end

    with pytest.raises(RecognizerFailed, match="Azure Speech cancelled the session"):
        await asyncio.to_thread(a_second_of_audio_then_the_end)
    with pytest.raises(RecognizerFailed):  # and from every call after
        await asyncio.to_thread(recognizer.feed, bytes(FRAME))
