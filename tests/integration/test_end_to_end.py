"""Whole pipeline: emulated ACS call → gateway → Redis → echo worker → egress → the call.

Real Redis, real sockets; gateway, worker and emulator run in this event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis

from callstream.demo import synth_talker
from callstream.ingress.server import Gateway
from callstream.shared.audio import chunk, frame_bytes_for, is_silent, mix
from callstream.shared.entries import OutAudio, OutMark, OutStop, encode_out
from callstream.shared.events import PLAYBACK_MARK
from callstream.shared.settings import Settings
from callstream.simulate import simulate
from callstream.workers.echo import echo_factory
from callstream.workers.runtime import WorkerRuntime
from tests.helpers import events as read_events
from tests.helpers import until, wait_for_event, xrange


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with Gateway(settings) as gw:
        yield gw


@pytest.fixture
async def echo(settings: Settings) -> AsyncIterator[WorkerRuntime]:
    async with WorkerRuntime(
        settings, "echo", echo_factory(0.0), max_calls=8, heartbeat_s=0.2
    ) as runtime:
        yield runtime


def speech_frames(pcm: bytes, rate_hz: int) -> list[bytes]:
    return [f for f in chunk(pcm, frame_bytes_for(rate_hz)) if not is_silent(f)]


def tone(rate_hz: int, seconds: float, freq_hz: float) -> bytes:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (8000 * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes()


async def test_mixed_16k_call_plays_back_exactly_the_speech_sent(
    gateway: Gateway, echo: WorkerRuntime
) -> None:
    rate = 16000
    talkers = [
        synth_talker(rate, 3.0, (0.1, 1.4), 140.0, seed=1),
        synth_talker(rate, 3.0, (1.5, 2.6), 220.0, seed=2),
    ]
    [result] = await simulate(gateway.url, talkers, rate_hz=rate, mode="mixed", linger_s=3.0)
    assert result.close_code in (1000, None)
    assert result.frames_sent == 150
    sent = speech_frames(mix(talkers), rate)
    assert len(sent) > 60
    assert speech_frames(result.recording, rate) == sent


async def test_unmixed_24k_call_with_one_speaker_and_two_silent(
    gateway: Gateway, echo: WorkerRuntime, redis: aioredis.Redis, settings: Settings
) -> None:
    rate = 24000
    speaker = synth_talker(rate, 2.0, (0.1, 1.8), 180.0, seed=3)
    silent = bytes(len(speaker))
    # A second audio-reading kind with no replica yet: the call's audio is kept for it (echo
    # alone would delete it once done), so the test can read what the gateway published.
    await redis.xgroup_create(settings.keys.calls, settings.keys.group("audit"), id="0")
    [result] = await simulate(
        gateway.url,
        [silent, speaker, silent],
        rate_hz=rate,
        mode="unmixed",
        call_ids=["e2e-unmixed"],
        linger_s=3.0,
    )
    assert result.close_code in (1000, None)
    assert result.frames_sent == 3 * 100
    assert speech_frames(result.recording, rate) == speech_frames(speaker, rate)
    # The gateway kept one channel per participant.
    entries = await xrange(redis, settings.keys.call_in("e2e-unmixed"))
    channels: dict[bytes, set[bytes]] = {}
    for _, fields in entries:
        if fields[b"kind"] == b"audio":
            channels.setdefault(fields[b"participant"], set()).add(fields[b"channel"])
    assert len(channels) == 3
    assert all(len(c) == 1 for c in channels.values())
    assert {next(iter(c)) for c in channels.values()} == {b"0", b"1", b"2"}


async def test_two_concurrent_calls_stay_isolated(gateway: Gateway, echo: WorkerRuntime) -> None:
    rate = 16000
    low = synth_talker(rate, 2.0, (0.1, 1.8), 120.0, seed=4)
    high = synth_talker(rate, 2.0, (0.1, 1.8), 300.0, seed=5)
    first, second = await asyncio.gather(
        simulate(gateway.url, [low], rate_hz=rate, linger_s=3.0),
        simulate(gateway.url, [high], rate_hz=rate, linger_s=3.0),
    )
    assert speech_frames(first[0].recording, rate) == speech_frames(low, rate)
    assert speech_frames(second[0].recording, rate) == speech_frames(high, rate)


async def test_dtmf_reaches_the_events_stream(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    [result] = await simulate(
        gateway.url,
        [bytes(16000 * 2)],
        rate_hz=16000,
        dtmf=[("7#", 0.2)],
        call_ids=["e2e-dtmf"],
        linger_s=0.5,
    )
    assert result.close_code in (1000, None)
    events = await read_events(redis, settings.keys.call_events("e2e-dtmf"))
    tones = [e.data["tone"] for e in events if e.type == "dtmf"]
    assert tones == ["7", "#"]
    assert len({e.id for e in events}) == len(events)


async def test_stop_on_the_out_stream_cuts_playback(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    """Audio plays to a mark; a stop then drops the 5 s still queued and sends StopAudio."""
    rate = 16000
    call_id = "e2e-stop"
    first = tone(rate, 0.5, 440.0)
    rest = tone(rate, 5.0, 660.0)

    async def bot() -> None:
        await wait_for_event(redis, settings.keys.call_events(call_id), "call.started", 10)
        out = settings.keys.call_out(call_id)
        for entry in (OutAudio(first), OutMark("first-done"), OutAudio(rest)):
            await redis.xadd(out, encode_out(entry))
        await wait_for_event(redis, settings.keys.call_events(call_id), PLAYBACK_MARK, 10)
        await redis.xadd(out, encode_out(OutStop()))

    bot_task = asyncio.create_task(bot())
    [result] = await simulate(
        gateway.url, [bytes(rate * 2 * 3)], rate_hz=rate, call_ids=[call_id], linger_s=1.0
    )
    await bot_task
    assert result.stops_received == 1
    first_frames = len(first) // 640
    # Egress had released the second tone ahead of the mark (its ~100 ms lead) ...
    assert result.frames_received > first_frames
    played = speech_frames(result.recording, rate)
    assert played[:first_frames] == chunk(first, 640)
    # ... and the stop cut it: a few frames at most played, not the 250 queued in Redis.
    assert len(played) <= first_frames + 10


async def test_egress_trims_what_it_has_read_from_the_out_stream(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    """A worker queues 3 s of audio as 150 entries; egress reads them into its playout buffer
    and trims them from Redis while the call is still playing them: a live call's out stream
    holds what is on its way, not what was played."""
    rate = 16000
    call_id = "e2e-trim"
    out = settings.keys.call_out(call_id)
    frames = chunk(tone(rate, 3.0, 440.0), 640)

    async def bot() -> None:
        await wait_for_event(redis, settings.keys.call_events(call_id), "call.started", 10)
        async with redis.pipeline(transaction=False) as pipe:
            for pcm in frames:
                pipe.xadd(out, encode_out(OutAudio(pcm)))
            await pipe.execute()

        async def trimmed() -> bool:
            return int(await redis.xlen(out)) < 10  # whole stream nodes of a few entries stay

        await until(trimmed)

    bot_task = asyncio.create_task(bot())
    [result] = await simulate(
        gateway.url, [bytes(rate * 2 * 5)], rate_hz=rate, call_ids=[call_id], linger_s=0.5
    )
    await bot_task
    assert speech_frames(result.recording, rate) == frames  # all of it played, in order


async def test_egress_reads_no_further_ahead_than_its_buffer(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A worker queues 6 s of audio at once; with CS_EGRESS_MAX_BUFFER_S = 1 egress leaves what
    is beyond its buffer in Redis until playback catches up (counted), and still plays all of
    it, in order, without a gap."""
    rate = 16000
    local = dataclasses.replace(settings, egress_max_buffer_s=1.0)
    call_id = "e2e-bounded"
    frames = chunk(tone(rate, 6.0, 440.0), 640)

    async def bot() -> None:
        await wait_for_event(redis, local.keys.call_events(call_id), "call.started", 10)
        async with redis.pipeline(transaction=False) as pipe:
            for pcm in frames:
                pipe.xadd(local.keys.call_out(call_id), encode_out(OutAudio(pcm)))
            await pipe.execute()

    async with Gateway(local) as gateway:
        bot_task = asyncio.create_task(bot())
        [result] = await simulate(
            gateway.url, [bytes(rate * 2 * 8)], rate_hz=rate, call_ids=[call_id], linger_s=0.5
        )
        await bot_task
        held = gateway.registry.get_sample_value("callstream_egress_reads_held_total")
    assert (held or 0) > 0
    assert speech_frames(result.recording, rate) == frames
