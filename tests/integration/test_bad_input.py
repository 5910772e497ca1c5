"""Every bad input gets its documented answer, and never disturbs a good call beside it.

Real gateway, real sockets, real Redis. Each test runs a good emulated call (``simulate``) while
a bad client misbehaves on the same gateway, then checks the good call's frames all reached its
in stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callstream.ingress.server import Gateway
from callstream.shared.settings import Settings
from callstream.simulate import simulate
from tests.helpers import wait_for_end

RATE = 16000
GOOD_SECONDS = 1.0


def metadata(rate: int = RATE) -> str:
    return json.dumps(
        {
            "kind": "AudioMetadata",
            "audioMetadata": {
                "subscriptionId": "s",
                "encoding": "PCM",
                "sampleRate": rate,
                "channels": 1,
                "length": rate // 50 * 2,
            },
        }
    )


def audio(pcm: bytes) -> str:
    return json.dumps(
        {
            "kind": "AudioData",
            "audioData": {
                "timestamp": "2024-11-15T19:16:12.925Z",
                "data": base64.b64encode(pcm).decode(),
                "silent": False,
            },
        }
    )


GOOD_FRAME = audio(b"\x01\x02" * 320)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with Gateway(settings) as gw:
        yield gw


def rejects(gateway: Gateway, reason: str) -> float:
    value = gateway.registry.get_sample_value(
        "callstream_ingress_rejects_total", {"reason": reason}
    )
    return value or 0.0


async def closed_with(conn: ClientConnection) -> tuple[int | None, str]:
    """Wait (bounded) for the server to close ``conn``; its close code and reason."""
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await conn.recv()
    return conn.close_code, conn.close_reason or ""


async def beside_a_good_call(
    gateway: Gateway,
    redis: aioredis.Redis,
    settings: Settings,
    bad: Callable[[], Awaitable[None]],
) -> None:
    """Run ``bad`` while a good 1 s call streams; the good call must lose nothing."""
    good = asyncio.create_task(
        simulate(
            gateway.url,
            [b"\x10\x00" * int(RATE * GOOD_SECONDS)],
            rate_hz=RATE,
            call_ids=["good-call"],
            linger_s=0.2,
        )
    )
    await bad()
    [result] = await good
    assert result.completed, result.error or result.close_reason
    entries = await wait_for_end(redis, settings.keys.call_in("good-call"))
    frames = [f for _, f in entries if f[b"kind"] == b"audio"]
    assert len(frames) == result.frames_sent == 50
    assert [int(f[b"seq"]) for f in frames] == list(range(50))
    assert entries[-1][1][b"kind"] == b"end"


async def test_malformed_json_closes_1007(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    async def bad() -> None:
        async with connect(gateway.url + "/bad-json") as conn:
            await conn.send(metadata())
            await conn.send(GOOD_FRAME)
            await conn.send('{"kind": "AudioData", "audioData": {')
            code, reason = await closed_with(conn)
            assert code == 1007
            assert "invalid JSON" in reason

    await beside_a_good_call(gateway, redis, settings, bad)
    assert rejects(gateway, "malformed") == 1
    # What the bad call sent before its mistake was published, and its end recorded.
    entries = await wait_for_end(redis, settings.keys.call_in("bad-json"))
    assert [f[b"kind"] for _, f in entries] == [b"audio", b"end"]
    assert entries[-1][1][b"reason"] == b"malformed"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ('{"kind": "TranscriptionMetadata", "transcriptionMetadata": {}}', "unknown_kind"),
        ('{"kind": "AudioData", "audioData": {"data": "!!not base64!!"}}', "invalid_frame"),
        (audio(b"\x00" * 100), "invalid_frame"),  # 100 bytes, not 640
    ],
    ids=["unknown-kind", "bad-base64", "wrong-frame-size"],
)
async def test_per_message_errors_are_skipped_and_counted(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings, message: str, reason: str
) -> None:
    async def bad() -> None:
        async with connect(gateway.url + "/skipper") as conn:
            await conn.send(metadata())
            await conn.send(GOOD_FRAME)
            await conn.send(message)
            await conn.send(GOOD_FRAME)
            await conn.close()

    await beside_a_good_call(gateway, redis, settings, bad)
    assert rejects(gateway, reason) == 1
    entries = await wait_for_end(redis, settings.keys.call_in("skipper"))
    # The call went on: both good frames published, the bad message skipped.
    assert [f[b"kind"] for _, f in entries] == [b"audio", b"audio", b"end"]
    assert entries[-1][1][b"reason"] == b"normal"


async def test_audio_before_metadata_closes_1008(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    async def bad() -> None:
        async with connect(gateway.url + "/early") as conn:
            await conn.send(GOOD_FRAME)
            code, reason = await closed_with(conn)
            assert code == 1008
            assert reason == "expected AudioMetadata as the first message, got AudioData"

    await beside_a_good_call(gateway, redis, settings, bad)
    assert rejects(gateway, "out_of_order") == 1
    assert await redis.exists(settings.keys.call_in("early")) == 0  # never became a call


async def test_a_socket_without_metadata_is_closed_1008_after_the_timeout(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Connected and silent (ACS sends AudioMetadata at once): closed after
    CS_METADATA_TIMEOUT_S instead of holding a connection for ever."""
    local = dataclasses.replace(settings, metadata_timeout_s=0.3)
    async with Gateway(local) as gateway:

        async def bad() -> None:
            async with connect(gateway.url + "/mute") as conn:
                code, reason = await closed_with(conn)
                assert code == 1008
                assert reason == "expected AudioMetadata within 0.3 s"

        await beside_a_good_call(gateway, redis, local, bad)
        assert rejects(gateway, "no_metadata") == 1
    assert await redis.exists(local.keys.call_in("mute")) == 0  # never became a call


async def test_a_changed_format_closes_1008(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    async def bad() -> None:
        async with connect(gateway.url + "/changer") as conn:
            await conn.send(metadata(16000))
            await conn.send(metadata(24000))
            code, reason = await closed_with(conn)
            assert code == 1008
            assert "already set to 16000 Hz" in reason

    await beside_a_good_call(gateway, redis, settings, bad)
    assert rejects(gateway, "out_of_order") == 1


async def test_unsupported_format_closes_1007(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    async def bad() -> None:
        async with connect(gateway.url + "/eight-khz") as conn:
            await conn.send(metadata(8000))
            code, reason = await closed_with(conn)
            assert code == 1007
            assert "expected sampleRate 16000 or 24000, got 8000" in reason

    await beside_a_good_call(gateway, redis, settings, bad)
    assert rejects(gateway, "invalid_format") == 1


async def test_binary_message_closes_1003(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    async def bad() -> None:
        async with connect(gateway.url + "/binary") as conn:
            await conn.send(metadata())
            await conn.send(b"\x00\x01\x02")
            code, reason = await closed_with(conn)
            assert code == 1003
            assert "binary message of 3 bytes" in reason

    await beside_a_good_call(gateway, redis, settings, bad)
    assert rejects(gateway, "binary") == 1


async def test_oversize_message_closes_1009(
    gateway: Gateway, redis: aioredis.Redis, settings: Settings
) -> None:
    async def bad() -> None:
        async with connect(gateway.url + "/huge", max_size=None) as conn:
            await conn.send(metadata())
            await conn.send(audio(bytes(settings.max_message_bytes)))
            code, _ = await closed_with(conn)
            assert code == 1009

    await beside_a_good_call(gateway, redis, settings, bad)
    assert rejects(gateway, "oversize") == 1


async def test_duplicate_call_id_is_refused(gateway: Gateway, settings: Settings) -> None:
    async with connect(gateway.url + "/twin") as first:
        await first.send(metadata())
        with pytest.raises(InvalidStatus) as refused:
            await connect(gateway.url + "/twin")
        assert refused.value.response.status_code == 409
        await first.send(GOOD_FRAME)  # the first call is unaffected
    assert rejects(gateway, "duplicate_call") == 1
