"""Attacks and failures found by probing the gateway and workers (issue 9), each reproduced
with real processes, real sockets and a real Redis, next to a good call that must not suffer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from callstream.demo import synth_talker
from callstream.shared.audio import chunk, is_silent
from callstream.shared.entries import OutAudio, decode_call, encode_out
from callstream.shared.settings import Settings
from callstream.simulate import metadata_message, simulate
from tests.helpers import (
    GatewayProcess,
    free_port,
    gateway_process,
    start_gateway,
    stop_process,
    until,
    wait_for_entry,
    wait_for_event,
    worker_process,
    xrange,
)


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
            assert await closed_with(conn) == (1008, "no message for 4 s")
        assert 'callstream_ingress_rejects_total{reason="idle"} 20.0' in await metrics(url)
    calls = [decode_call(fields).call_id for _, fields in await xrange(redis, settings.keys.calls)]
    assert set(calls) == {"good"}  # the idle sockets were never published as calls


# ------------------------------------------------------------------ call identity


async def refused_status(url: str) -> int | None:
    """The HTTP status an upgrade to ``url`` is refused with (None: it was accepted)."""
    try:
        async with connect(url):
            return None
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_a_live_call_id_is_refused_on_every_gateway(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A victim streams on gateway 1; an intruder asks for the same call id on gateway 2 (the
    same Redis): 409, counted; the victim's call goes on and is echoed whole."""
    talker = synth_talker(16000, 3.0, (0.1, 2.8), 160.0, seed=11)
    async with (
        gateway_process(settings) as one,
        gateway_process(settings) as two,
        worker_process(settings, "echo"),
    ):
        victim = asyncio.create_task(simulate(one, [talker], call_ids=["victim-1"], linger_s=1.0))
        await wait_for_entry(redis, settings.keys.calls, lambda f: f[b"type"] == b"started", 10)
        assert await refused_status(f"{two}/victim-1?mode=mixed") == 409
        assert await refused_status(f"{one}/victim-1?mode=mixed") == 409  # and on its own
        [result] = await victim
        assert 'callstream_ingress_rejects_total{reason="duplicate_call"} 1.0' in await metrics(two)
    assert result.completed
    assert speech_frames(result.recording) == speech_frames(talker)


async def test_a_reused_call_id_is_a_new_call_that_hears_nothing_of_the_old_one(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A call with id reuse-A runs to its end; a second call with the same id and another
    voice is a new call, reuse-A~2: its caller hears its own echo, exactly, and nothing of
    the first call's audio."""
    first = synth_talker(16000, 2.0, (0.1, 1.8), 120.0, seed=1)
    second = synth_talker(16000, 2.0, (0.1, 1.8), 230.0, seed=2)
    async with gateway_process(settings) as url, worker_process(settings, "echo"):
        [one] = await simulate(url, [first], call_ids=["reuse-A"], linger_s=1.0)
        [two] = await simulate(url, [second], call_ids=["reuse-A"], linger_s=1.0)
    assert speech_frames(one.recording) == speech_frames(first)
    assert speech_frames(two.recording) == speech_frames(second)  # none of the first's
    calls = [decode_call(fields) for _, fields in await xrange(redis, settings.keys.calls)]
    assert [(c.call_id, type(c).__name__) for c in calls] == [
        ("reuse-A", "CallStarted"),
        ("reuse-A", "CallEnded"),
        ("reuse-A~2", "CallStarted"),
        ("reuse-A~2", "CallEnded"),
    ]
    started = await wait_for_event(
        redis, settings.keys.call_events("reuse-A~2"), "call.started", timeout_s=5
    )
    assert started.call_id == "reuse-A~2"


async def test_the_id_of_a_gateway_that_died_is_free_again_after_its_lease(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Gateway 1 is killed (-9) mid-call: it cannot release the call's id, so gateway 2
    refuses it until the lease (CS_CALL_LEASE_S, 2 s here) runs out, then takes it as a new
    call."""
    env = {"CS_CALL_LEASE_S": "2"}
    talker = synth_talker(16000, 20.0, (0.1, 19.0), 160.0, seed=3)
    async with gateway_process(settings, env=env) as two:
        first = await start_gateway(settings, env)
        proc, one = first.proc, first.url
        victim = asyncio.create_task(simulate(one, [talker], call_ids=["orphaned"]))
        try:
            await wait_for_entry(redis, settings.keys.calls, lambda f: f[b"type"] == b"started", 10)
            proc.kill()
            await proc.wait()
            killed_at = time.monotonic()
            assert await refused_status(f"{two}/orphaned?mode=mixed") == 409

            async def accepted() -> bool:
                return await refused_status(f"{two}/orphaned?mode=mixed") is None

            await until(accepted, timeout_s=10)
            assert time.monotonic() - killed_at < 2 + 3  # the lease, and a renewal's slack
        finally:
            victim.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await victim


# ------------------------------------------------------------------ the operator's view


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_can_move_off_the_call_port_and_an_open_gateway_says_so(
    settings: Settings,
) -> None:
    """With --metrics-port, /metrics, /healthz and /readyz are served there and the call port
    answers /metrics with 404; without authentication the gateway says so as it starts."""
    port = free_port()
    gateway = await start_gateway(settings, None, "--metrics-port", str(port))
    try:
        call_port = gateway.url.replace("ws://", "http://").removesuffix("/ws")
        assert (await asyncio.to_thread(http, f"{call_port}/metrics"))[0] == 404
        status, text = await asyncio.to_thread(http, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert "callstream_ingress_connections" in text
        assert await asyncio.to_thread(http, f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
        assert (await asyncio.to_thread(http, f"http://127.0.0.1:{port}/healthz"))[0] == 200
    finally:
        await stop_process(gateway.proc)
    assert "authentication is OFF" in gateway.banner


# ------------------------------------------------------------------ bounded input


def unmixed_frame(participant: str, pcm: bytes = b"\x10\x10" * 320) -> str:
    return json.dumps(
        {
            "kind": "AudioData",
            "audioData": {
                "data": base64.b64encode(pcm).decode(),
                "timestamp": "2024-11-15T19:16:12.925Z",
                "participantRawID": participant,
                "silent": False,
            },
        }
    )


async def closed_with(conn: ClientConnection) -> tuple[int | None, str | None]:
    async with asyncio.timeout(10):
        try:
            while True:
                await conn.recv()
        except ConnectionClosed:
            pass
    return conn.close_code, conn.close_reason


async def test_a_call_cannot_name_participants_without_bound(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """An unmixed call names a new participantRawID with every frame: the 65th distinct one
    (CS_MAX_PARTICIPANTS, 64) closes it with 1008, counted; what it sent before is its own."""
    async with gateway_process(settings) as url:
        async with connect(f"{url}/crowd?mode=unmixed") as conn:
            await conn.send(metadata_message(16000))
            for n in range(70):
                await conn.send(unmixed_frame(f"8:acs:{n}"))
            code, reason = await closed_with(conn)
        assert (code, reason) == (
            1008,
            "more than 64 participants in one call (CS_MAX_PARTICIPANTS)",
        )
        assert 'reason="too_many_participants"} 1.0' in await metrics(url)
    entries = await xrange(redis, settings.keys.call_in("crowd"))
    heard = {fields[b"participant"] for _, fields in entries if fields[b"kind"] == b"audio"}
    assert len(heard) == 64


async def test_an_oversized_string_field_is_refused_before_it_reaches_redis(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A frame whose participantRawID has 60 000 characters (it would be copied into every
    stream entry) closes the call with 1007; nothing of it is published."""
    async with gateway_process(settings) as url:
        async with connect(f"{url}/bloated?mode=unmixed") as conn:
            await conn.send(metadata_message(16000))
            await conn.send(unmixed_frame("8:acs:ok"))
            await conn.send(unmixed_frame("x" * 60_000))
            code, reason = await closed_with(conn)
        assert code == 1007
        assert reason is not None
        assert "expected 'participantrawid' to be at most 256 characters" in reason
    entries = await xrange(redis, settings.keys.call_in("bloated"))
    assert max(len(fields.get(b"participant", b"")) for _, fields in entries) < 256


async def test_a_client_sending_faster_than_real_time_is_closed(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A call sends frames as fast as it can (300 000 of them once grew a gateway by 130 MB):
    after a burst of two seconds' worth it is closed with 1008, counted, while a real-time call
    on the same gateway goes on undisturbed."""
    talker = synth_talker(16000, 3.0, (0.1, 2.8), 150.0, seed=4)
    async with gateway_process(settings) as url, worker_process(settings, "echo"):
        good = asyncio.create_task(simulate(url, [talker], call_ids=["steady"], linger_s=1.0))
        async with connect(f"{url}/flood?mode=mixed") as conn:
            await conn.send(metadata_message(16000))
            frame = unmixed_frame("")
            sent = 0
            with contextlib.suppress(ConnectionClosed):
                while sent < 300_000:
                    await conn.send(frame)
                    sent += 1
            code, reason = await closed_with(conn)
        assert code == 1008
        assert reason == "more than 250 messages a second (CS_MAX_MESSAGES_PER_S)"
        # Closed after its burst: what it got into Redis is about two seconds' worth (how many
        # it wrote into its socket meanwhile depends on when its client noticed the close).
        assert await redis.xlen(settings.keys.call_in("flood")) < 1000
        [result] = await good
        assert 'callstream_ingress_rejects_total{reason="too_fast"} 1.0' in await metrics(url)
    assert speech_frames(result.recording) == speech_frames(talker)


async def test_a_gateway_holds_at_most_its_calls_and_an_address_at_most_its_sockets(
    settings: Settings,
) -> None:
    """CS_MAX_CALLS: past it new calls get 503 and /readyz says the gateway is full, until a
    call ends. CS_MAX_CONNECTIONS_PER_ADDRESS (off by default: behind a load balancer every
    call comes from its address): past it a client address gets 429."""
    async with gateway_process(settings, env={"CS_MAX_CALLS": "3"}) as url:
        readyz = url.replace("ws://", "http://").removesuffix("/ws") + "/readyz"
        held = [await connect(f"{url}/held-{i}?mode=mixed") for i in range(3)]
        assert await refused_status(f"{url}/one-more?mode=mixed") == 503
        status, text = await asyncio.to_thread(http, readyz)
        assert (status, text) == (503, "gateway full: 3 calls (CS_MAX_CALLS 3)\n")
        await held.pop().close()

        async def ready() -> bool:
            return (await asyncio.to_thread(http, readyz))[0] == 200

        await until(ready)
        assert await refused_status(f"{url}/one-more?mode=mixed") is None
        for conn in held:
            await conn.close()
    async with gateway_process(settings, env={"CS_MAX_CONNECTIONS_PER_ADDRESS": "2"}) as url:
        held = [await connect(f"{url}/near-{i}?mode=mixed") for i in range(2)]
        assert await refused_status(f"{url}/third?mode=mixed") == 429
        assert 'reason="too_many_connections"} 1.0' in await metrics(url)
        for conn in held:
            await conn.close()


async def test_a_client_that_does_not_read_its_audio_is_closed(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A call that sends but never reads (its receive window shut): audio for it would pile up
    in the gateway. Once its socket has taken nothing for CS_EGRESS_STALL_TIMEOUT_S it is
    closed with 1008 "not reading", counted, and the call ends; a good call on the same
    gateway hears all of its echo."""
    talker = synth_talker(16000, 3.0, (0.1, 2.8), 150.0, seed=5)
    env = {"CS_EGRESS_STALL_TIMEOUT_S": "1", "CS_INBOUND_IDLE_TIMEOUT_S": "120"}
    async with gateway_process(settings, env=env) as url, worker_process(settings, "echo"):
        good = asyncio.create_task(simulate(url, [talker], call_ids=["reader"], linger_s=1.0))
        host, port = url.removeprefix("ws://").removesuffix("/ws").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        # max_queue=1: the client stops reading its socket once one message waits unread.
        async with connect(f"{url}/deaf?mode=mixed", sock=sock, max_queue=1) as conn:
            await conn.send(metadata_message(16000))
            await conn.send(unmixed_frame(""))  # the call is published
            await wait_for_entry(
                redis, settings.keys.calls, lambda f: decode_call(f).call_id == "deaf", 10
            )
            # A minute of answer for it, as a worker would write it: egress paces it out.
            async with redis.pipeline(transaction=False) as pipe:
                for _ in range(3000):
                    pipe.xadd(settings.keys.call_out("deaf"), encode_out(OutAudio(b"\x01" * 640)))
                await pipe.execute()

            async def let_go() -> bool:
                return 'callstream_ingress_rejects_total{reason="not_reading"} 1.0' in (
                    await metrics(url)
                )

            await until(let_go, timeout_s=60)
            code, reason = await closed_with(conn)  # reading again: the audio, then the close
        assert (code, reason) == (1008, "not reading")
        await wait_for_event(redis, settings.keys.call_events("deaf"), "call.ended", 10)
        [result] = await good
    assert speech_frames(result.recording) == speech_frames(talker)


async def upgrades_at_once(url: str, count: int) -> tuple[list[ClientConnection], list[int]]:
    """``count`` upgrades sent together: the sockets accepted, the statuses of those refused."""

    async def one(i: int) -> ClientConnection | int:
        try:
            return await connect(f"{url}/burst-{i}?mode=mixed")
        except InvalidStatus as exc:
            return exc.response.status_code

    results = await asyncio.gather(*(one(i) for i in range(count)))
    accepted = [r for r in results if not isinstance(r, int)]
    return accepted, sorted(r for r in results if isinstance(r, int))


async def test_upgrades_sent_together_cannot_pass_the_limits_together(settings: Settings) -> None:
    """The limits count an upgrade from its check on, not from its handshake's end: twenty
    upgrades at once against CS_MAX_CALLS 4 (or CS_MAX_CONNECTIONS_PER_ADDRESS 4) get four
    sockets, sixteen refusals (before, all twenty were accepted)."""
    for env, status in (
        ({"CS_MAX_CALLS": "4"}, 503),
        ({"CS_MAX_CONNECTIONS_PER_ADDRESS": "4"}, 429),
    ):
        async with gateway_process(settings, env=env) as url:
            accepted, refused = await upgrades_at_once(url, 20)
            assert (len(accepted), refused) == (4, [status] * 16)
            for conn in accepted:
                await conn.close()


async def test_a_call_ending_after_redis_dropped_every_connection_frees_its_id(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Redis drops every client connection (as a restart does, here without losing data): the
    gateway's pooled connections are dead. A call ending then still releases its id's lease
    (before, the release failed on a dead connection and the id was refused, 409, until the
    lease expired)."""
    async with gateway_process(settings) as url:
        async with connect(f"{url}/again?mode=mixed") as conn:
            await conn.send(metadata_message(16000))
            await conn.send(unmixed_frame(""))
            await wait_for_entry(
                redis, settings.keys.calls, lambda f: decode_call(f).call_id == "again", 10
            )
            await redis.client_kill_filter(_type="normal", skipme=True)

        async def released() -> bool:
            return not await redis.exists(settings.keys.lease("again"))

        await until(released, timeout_s=5)  # well before the lease's 15 s
        assert await refused_status(f"{url}/again?mode=mixed") is None


async def test_a_call_closed_for_bad_input_is_not_closed_and_counted_again(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """A flooder is closed (too fast) and then neither reads nor answers the close: until
    websockets' close timeout cuts it, the idle check must not close it again and count it as
    `idle` too (it did)."""
    env = {"CS_INBOUND_IDLE_TIMEOUT_S": "1"}
    async with gateway_process(settings, env=env) as url:
        async with connect(f"{url}/flooder?mode=mixed") as conn:
            conn.transport.pause_reading()  # it reads nothing: the close is never answered
            await conn.send(metadata_message(16000))
            frame = unmixed_frame("")
            with contextlib.suppress(ConnectionClosed):
                for _ in range(1000):
                    await conn.send(frame)
            await wait_for_event(redis, settings.keys.call_events("flooder"), "call.ended", 30)
            text = await metrics(url)
        assert 'callstream_ingress_rejects_total{reason="too_fast"} 1.0' in text
        assert 'reason="idle"' not in text


@contextlib.asynccontextmanager
async def gateway_told_to_stop(
    settings: Settings, env: dict[str, str]
) -> AsyncIterator[GatewayProcess]:
    """A gateway process the test signals itself: at the end it must have exited 0 by itself
    (within 20 s); if the test failed before, it is killed."""
    gateway = await start_gateway(settings, env)
    try:
        yield gateway
        async with asyncio.timeout(20):
            assert await gateway.proc.wait() == 0
    finally:
        if gateway.proc.returncode is None:
            gateway.proc.kill()
            await gateway.proc.wait()


async def test_a_gateway_told_to_stop_drains_its_live_calls_then_exits(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """SIGTERM (Kubernetes stopping the pod): at once `/readyz` says draining and new calls get
    503, while the live call streams on to its end and hears all of its echo; then the process
    exits 0."""
    talker = synth_talker(16000, 4.0, (0.1, 3.8), 150.0, seed=6)
    async with gateway_told_to_stop(settings, {"CS_DRAIN_TIMEOUT_S": "60"}) as gateway:
        url = gateway.url
        readyz = url.replace("ws://", "http://").removesuffix("/ws") + "/readyz"
        async with worker_process(settings, "echo"):
            call = asyncio.create_task(simulate(url, [talker], call_ids=["draining"], linger_s=1.0))
            await wait_for_entry(
                redis, settings.keys.calls, lambda f: decode_call(f).call_id == "draining", 10
            )
            gateway.proc.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                status, text = await asyncio.to_thread(http, readyz)
                return status == 503 and text.startswith("draining")

            await until(draining)
            assert await refused_status(f"{url}/late?mode=mixed") == 503
            [result] = await call
            assert result.error is None
            assert speech_frames(result.recording) == speech_frames(talker)


async def test_a_draining_gateway_closes_what_is_left_at_its_deadline(settings: Settings) -> None:
    """A call that would go on past CS_DRAIN_TIMEOUT_S is closed with 1001 (going away: ACS
    reconnects elsewhere), and the process exits 0."""
    async with gateway_told_to_stop(settings, {"CS_DRAIN_TIMEOUT_S": "1"}) as gateway:
        async with connect(f"{gateway.url}/endless?mode=mixed") as conn:
            await conn.send(metadata_message(16000))
            await conn.send(unmixed_frame(""))
            gateway.proc.send_signal(signal.SIGTERM)
            code, _ = await closed_with(conn)  # it keeps reading; the gateway ends the call
        assert code == 1001
