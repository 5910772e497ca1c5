"""Attacks and failures found by probing the gateway and workers (issue 9), each reproduced
with real processes, real sockets and a real Redis, next to a good call that must not suffer."""

from __future__ import annotations

import asyncio
import urllib.request

import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from callstream.demo import synth_talker
from callstream.shared.audio import chunk, is_silent
from callstream.shared.entries import decode_call
from callstream.shared.settings import Settings
from callstream.simulate import metadata_message, simulate
from tests.helpers import gateway_process, worker_process, xrange


def speech_frames(pcm: bytes) -> list[bytes]:
    return [frame for frame in chunk(pcm, 640) if not is_silent(frame)]


async def metrics(ws_url: str) -> str:
    url = ws_url.replace("ws://", "http://").removesuffix("/ws") + "/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())


async def test_sockets_that_send_nothing_hold_no_worker_and_are_closed(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """20 sockets send AudioMetadata and then nothing, against an echo replica of 5 slots: a
    good call is echoed at once (they never became calls, so they took no slot), and each of
    them is closed with 1008 after CS_INBOUND_IDLE_TIMEOUT_S (4 s, after the good call), counted
as `idle`."""
    async with (
        gateway_process(settings, env={"CS_INBOUND_IDLE_TIMEOUT_S": "4"}) as url,
        worker_process(settings, "echo", "--max-calls", "5"),
    ):
        idle = [await connect(f"{url}/idle-{i}?mode=mixed") for i in range(20)]
        for conn in idle:
            await conn.send(metadata_message(16000))
        talker = synth_talker(16000, 1.5, (0.1, 1.3), 150.0, seed=9)
        [good] = await simulate(url, [talker], call_ids=["good"], linger_s=1.0)
        assert good.completed
        assert speech_frames(good.recording) == speech_frames(talker)  # echoed, all of it
        assert all(conn.state is State.OPEN for conn in idle)  # ... while they were all there
        for conn in idle:
            async with asyncio.timeout(10):
                try:
                    while True:
                        await conn.recv()
                except ConnectionClosed:
                    pass
            assert conn.close_code == 1008
            assert conn.close_reason == "no message for 4 s"
        assert 'callstream_ingress_rejects_total{reason="idle"} 20.0' in await metrics(url)
    calls = [decode_call(fields).call_id for _, fields in await xrange(redis, settings.keys.calls)]
    assert set(calls) == {"good"}  # the idle sockets were never published as calls
