"""The gateway's HTTP side, bearer-token authentication, and a Redis that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from callstream.bus.publisher import FLUSH_TIMEOUT_S
from callstream.ingress.server import Gateway
from callstream.shared.errors import ConfigError
from callstream.shared.settings import AuthSettings, Settings
from callstream.simulate import CallResult, simulate
from tests.helpers import RedisProcess, free_port, until, wait_for_end, xrange

ISSUER = "https://acscallautomation.communication.azure.com"
AUDIENCE = "acs-resource-id"


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, url)


def http_base(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


# ------------------------------------------------------------------ HTTP endpoints


async def test_health_ready_and_metrics(settings: Settings) -> None:
    async with Gateway(settings) as gateway:
        base = http_base(gateway)
        assert await get(base + "/healthz") == (200, "ok\n")
        assert await get(base + "/readyz") == (200, "ready\n")
        status, body = await get(base + "/metrics")
        assert status == 200
        assert "callstream_ingest_latency_seconds_bucket" in body
        assert "callstream_ingress_rejects_total" in body
        assert "callstream_egress_frames_sent_total" in body
        assert (await get(base + "/nope"))[0] == 404
        status, body = await get(base + "/ws/bad%20id")
        assert status == 400
        assert "call id must be" in body
        status, body = await get(base + "/ws/x?mode=stereo")
        assert (status, body) == (400, "mode must be mixed or unmixed, got 'stereo'\n")
        status, body = await get(base + "/ws/x?tenant=a%20b")
        assert status == 400
        assert body.startswith("tenant must be 1-64 letters, digits")
        assert (await get(base + "/ws/x?queue=" + "q" * 65))[0] == 400
        assert (await get(base + "/ws/plain-http"))[0] == 426  # not a WebSocket upgrade


async def test_readyz_is_503_when_redis_does_not_answer(settings: Settings) -> None:
    dead = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with Gateway(dead) as gateway:
        status, body = await get(http_base(gateway) + "/readyz")
        assert status == 503
        assert body.startswith("Redis unavailable:")
        assert (await get(http_base(gateway) + "/healthz"))[0] == 200


# ------------------------------------------------------------------ Redis going away


async def wait_ready(gateway: Gateway, status: int, timeout_s: float = 10) -> str:
    """Poll /readyz until it answers ``status`` (bounded); its body then."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer, body = await get(http_base(gateway) + "/readyz")
        if answer == status:
            return body
        assert time.monotonic() < deadline, f"/readyz never became {status} (last: {body!r})"
        await asyncio.sleep(0.1)


async def streaming_call(
    gateway: Gateway, call_id: str, seconds: int
) -> asyncio.Task[list[CallResult]]:
    """A call of ``seconds`` of audio, once the gateway has published some of its frames."""
    call = asyncio.create_task(
        simulate(gateway.url, [b"\x10\x00" * 16000 * seconds], call_ids=[call_id], linger_s=0.2)
    )

    async def flowing() -> bool:
        frames = gateway.registry.get_sample_value("callstream_ingress_frames_total")
        return frames not in (None, 0.0)

    await until(flowing)
    return call


async def test_a_call_that_cannot_be_published_is_closed_1011_and_the_gateway_recovers(
    settings: Settings, private_redis: RedisProcess
) -> None:
    local = dataclasses.replace(settings, redis_url=private_redis.url)
    async with Gateway(local) as gateway:
        # Let the call stream, then take Redis away under it.
        call = await streaming_call(gateway, "doomed", seconds=4)
        private_redis.kill()
        [result] = await call
        assert result.close_code == 1011
        assert result.close_reason.startswith("event bus unavailable")
        assert result.frames_sent < 200  # closed long before its 4 s were sent
        await wait_ready(gateway, 503)
        # While Redis is away, new calls are refused at the upgrade rather than accepted.
        [refused] = await simulate(gateway.url, [b"\x10\x00" * 1600], call_ids=["refused"])
        assert refused.error is not None
        assert refused.error.startswith("server refused the call: HTTP 503")
        rejects = gateway.registry.get_sample_value(
            "callstream_ingress_rejects_total", {"reason": "bus_unavailable"}
        )
        assert rejects == 2
        # Redis comes back: the same gateway process serves a new call.
        private_redis.start()
        await wait_ready(gateway, 200)
        [after] = await simulate(
            gateway.url, [b"\x10\x00" * 16000], call_ids=["after"], linger_s=0.2
        )
        assert after.completed, after.error or after.close_reason


async def test_a_call_redis_stops_answering_is_closed_1011_after_the_flush_timeout(
    settings: Settings, private_redis: RedisProcess
) -> None:
    local = dataclasses.replace(settings, redis_url=private_redis.url)
    async with Gateway(local) as gateway:
        call = await streaming_call(gateway, "hung", seconds=20)
        private_redis.pause()
        try:
            [result] = await call
        finally:
            private_redis.resume()
        assert result.close_code == 1011
        assert result.close_reason == (
            f"event bus unavailable: Redis did not answer within {FLUSH_TIMEOUT_S:.0f} s"
        )
        assert result.frames_sent < 50 * 15  # closed long before its 20 s were sent
        # Redis answers again: the gateway is ready again and reconnects for the next call.
        await wait_ready(gateway, 200)
        [after] = await simulate(
            gateway.url, [b"\x10\x00" * 16000], call_ids=["after-hang"], linger_s=0.2
        )
        assert after.completed, after.error or after.close_reason


# ------------------------------------------------------------------ Redis refusing writes


async def test_a_redis_that_refuses_writes_makes_the_gateway_unready_until_it_takes_them_again(
    settings: Settings, private_redis: RedisProcess
) -> None:
    """Out of memory under noeviction, Redis still answers PING but refuses every XADD: the
    call streaming is closed with 1011, /readyz and new upgrades answer 503 with the reason;
    once Redis has memory again the gateway is ready and publishes a new call."""
    local = dataclasses.replace(settings, redis_url=private_redis.url)
    raw = aioredis.Redis.from_url(private_redis.url)
    try:
        async with Gateway(local) as gateway:
            await wait_ready(gateway, 200)
            call = await streaming_call(gateway, "squeezed", seconds=10)
            await raw.set("ballast", b"\x01" * 2_000_000)
            await raw.config_set("maxmemory-policy", "noeviction")
            await raw.config_set("maxmemory", "1mb")
            [result] = await call
            assert result.close_code == 1011
            assert result.close_reason.startswith(
                "event bus unavailable: OOM command not allowed when used memory"
            )
            assert result.frames_sent < 50 * 8  # closed long before its 10 s were sent
            body = await wait_ready(gateway, 503)
            assert body.startswith("Redis unavailable: writes refused: OOM command not allowed")
            assert await raw.ping()  # Redis answers: only its writes are refused
            [refused] = await simulate(gateway.url, [b"\x10\x00" * 1600], call_ids=["later"])
            assert refused.error is not None
            assert refused.error.startswith("server refused the call: HTTP 503")
            assert "event bus unavailable: writes refused: OOM" in refused.error
            assert gateway.registry.get_sample_value("callstream_ingress_redis_up") == 1
            assert gateway.registry.get_sample_value("callstream_ingress_redis_writable") == 0
            # Redis gets memory again: ready again, and a call is published.
            await raw.config_set("maxmemory", "0")
            await wait_ready(gateway, 200)
            assert gateway.registry.get_sample_value("callstream_ingress_redis_writable") == 1
            [after] = await simulate(
                gateway.url, [b"\x10\x00" * 16000], call_ids=["after-oom"], linger_s=0.2
            )
            assert after.completed, after.error or after.close_reason
            rejects = gateway.registry.get_sample_value(
                "callstream_ingress_rejects_total", {"reason": "bus_unavailable"}
            )
            assert rejects == 2  # the call closed with 1011 and the upgrade refused
        stored = await wait_for_end(raw, local.keys.call_in("after-oom"))
        assert sum(fields[b"kind"] == b"audio" for _, fields in stored) == after.frames_sent
    finally:
        await raw.aclose()


async def test_a_refusal_only_the_publisher_sees_makes_the_gateway_unready_until_a_check(
    settings: Settings, private_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis takes the health check's write but refuses XADD (an ACL without it): the
    publisher's refusal makes the gateway unready at once; the next check that writes makes it
    ready again."""
    caplog.set_level(logging.INFO, logger="callstream.ingress.server")
    raw = aioredis.Redis.from_url(private_redis.url)
    try:
        await raw.acl_setuser(
            "gw", enabled=True, passwords=["+pw"], keys=["*"], categories=["+@all"]
        )
        url = f"redis://gw:pw@127.0.0.1:{private_redis.port}/0"
        async with Gateway(dataclasses.replace(settings, redis_url=url)) as gateway:
            await wait_ready(gateway, 200)
            call = await streaming_call(gateway, "denied", seconds=10)
            await raw.acl_setuser("gw", enabled=True, commands=["-xadd"])
            [result] = await call
            assert result.close_code == 1011
            assert result.close_reason.startswith("event bus unavailable: NOPERM")
            assert "'xadd'" in result.close_reason

            async def ready_again() -> bool:
                return gateway.registry.get_sample_value("callstream_ingress_redis_writable") == 1

            await until(ready_again)
        messages = [r.getMessage() for r in caplog.records]
        unready = next(
            i
            for i, message in enumerate(messages)
            if message.startswith("Redis unavailable, refusing new calls: writes refused: NOPERM")
        )
        assert "Redis is available: accepting calls" in messages[unready + 1 :]
    finally:
        await raw.aclose()


# ------------------------------------------------------------------ authentication


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(key: rsa.RSAPrivateKey, kid: str = "k1") -> dict[str, object]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return {"keys": [public]}


def token(
    key: rsa.RSAPrivateKey,
    *,
    kid: str = "k1",
    iss: str = ISSUER,
    aud: str = AUDIENCE,
    expires_in_s: int = 3600,
) -> str:
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "iat": now, "nbf": now - 5, "exp": now + expires_in_s}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
async def authed_gateway(
    settings: Settings, signing_key: rsa.RSAPrivateKey, tmp_path: Path
) -> AsyncIterator[Gateway]:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(signing_key)))
    auth = AuthSettings(jwks_file=str(path), issuer=ISSUER, audience=AUDIENCE)
    async with Gateway(dataclasses.replace(settings, auth=auth)) as gateway:
        yield gateway


async def refused_status(url: str, authorization: str | None) -> int:
    headers = {"Authorization": authorization} if authorization else {}
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, additional_headers=headers)
    return refused.value.response.status_code


async def test_bad_tokens_are_refused_with_401(
    authed_gateway: Gateway, signing_key: rsa.RSAPrivateKey
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    url = authed_gateway.url
    cases = {
        "missing": None,
        "not bearer": "Basic dXNlcjpwYXNz",
        "garbage": "Bearer not-a-jwt",
        "wrong key": f"Bearer {token(other)}",
        "unknown kid": f"Bearer {token(signing_key, kid='k9')}",
        "wrong audience": f"Bearer {token(signing_key, aud='someone-else')}",
        "wrong issuer": f"Bearer {token(signing_key, iss='https://evil.example')}",
        "expired": f"Bearer {token(signing_key, expires_in_s=-60)}",
    }
    for name, header in cases.items():
        assert await refused_status(url, header) == 401, name
    rejects = authed_gateway.registry.get_sample_value(
        "callstream_ingress_rejects_total", {"reason": "unauthenticated"}
    )
    assert rejects == len(cases)


async def test_a_valid_token_lets_the_call_in(
    authed_gateway: Gateway, signing_key: rsa.RSAPrivateKey
) -> None:
    [result] = await simulate(
        authed_gateway.url,
        [b"\x10\x00" * 8000],
        linger_s=0.2,
        headers={"Authorization": f"Bearer {token(signing_key)}"},
    )
    assert result.completed, result.error


@contextlib.contextmanager
def jwks_server(body: bytes, *, delay_s: float = 0.0) -> Iterator[tuple[str, list[float]]]:
    """A JWKS endpoint serving ``body`` after ``delay_s``: its URL, and when it was fetched."""
    fetches: list[float] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(time.monotonic())
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/calling/keys", fetches
    finally:
        server.shutdown()
        thread.join()


async def test_keys_can_come_from_a_jwks_url(
    settings: Settings, signing_key: rsa.RSAPrivateKey
) -> None:
    with jwks_server(json.dumps(jwks(signing_key)).encode()) as (url, _):
        auth = AuthSettings(jwks_url=url, issuer=ISSUER, audience=AUDIENCE)
        async with Gateway(dataclasses.replace(settings, auth=auth)) as gateway:
            assert await refused_status(gateway.url, None) == 401
            [result] = await simulate(
                gateway.url,
                [b"\x10\x00" * 8000],
                linger_s=0.2,
                headers={"Authorization": f"Bearer {token(signing_key)}"},
            )
            assert result.completed, result.error


async def test_public_address_without_auth_refuses_to_start(settings: Settings) -> None:
    with pytest.raises(
        ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without authentication"
    ):
        Gateway(settings, host="0.0.0.0")
    async with Gateway(settings, host="0.0.0.0", allow_unauthenticated=True) as gateway:
        assert gateway.port > 0


async def test_an_overloaded_gateway_refuses_new_calls_and_keeps_its_calls(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Redis holds writes back (CLIENT PAUSE WRITE: the backlog grows, pings still answer):
    past CS_MAX_BACKLOG_BYTES the gateway refuses new calls with 503 and says so in /readyz;
    the call already streaming loses nothing; when Redis catches up, calls are accepted again."""
    local = dataclasses.replace(settings, max_backlog_bytes=20_000)
    async with Gateway(local) as gateway:
        call = await streaming_call(gateway, "steady", seconds=4)
        await redis.client_pause(3000, all=False)  # writes wait up to 3 s (< the 5 s timeout)
        try:

            async def backlogged() -> bool:
                waiting = gateway.registry.get_sample_value("callstream_ingress_backlog_bytes")
                return (waiting or 0) > 20_000

            await until(backlogged)
            status, body = await get(http_base(gateway) + "/readyz")
            assert status == 503
            assert body.startswith("gateway overloaded:")
            [refused] = await simulate(gateway.url, [b"\x10\x00" * 1600], call_ids=["extra"])
            assert refused.error is not None
            assert refused.error.startswith("server refused the call: HTTP 503")
            assert "gateway overloaded" in refused.error
        finally:
            await redis.client_unpause()
        await wait_ready(gateway, 200)
        [result] = await call
        assert result.completed, result.error or result.close_reason
        rejects = gateway.registry.get_sample_value(
            "callstream_ingress_rejects_total", {"reason": "overloaded"}
        )
        assert rejects == 1
    stored = [e for e in await xrange(redis, settings.keys.call_in("steady"))]
    assert sum(fields[b"kind"] == b"audio" for _, fields in stored) == result.frames_sent


async def test_tokens_with_made_up_key_ids_do_not_make_the_gateway_hammer_the_key_server(
    settings: Settings, signing_key: rsa.RSAPrivateKey
) -> None:
    """40 upgrades with tokens naming key ids the JWKS does not hold, against a key server that
    takes 2 s to answer: all refused 401 with at most two fetches of the JWKS (the first, and
    one refresh: PyJWT cools refetches down), and a valid caller is let in after them."""
    body = json.dumps(jwks(signing_key)).encode()
    with jwks_server(body, delay_s=2.0) as (url, fetches):
        auth = AuthSettings(jwks_url=url, issuer=ISSUER, audience=AUDIENCE)
        async with Gateway(dataclasses.replace(settings, auth=auth)) as gateway:
            made_up = [f"Bearer {token(signing_key, kid=uuid.uuid4().hex)}" for _ in range(40)]
            statuses = await asyncio.gather(
                *(refused_status(gateway.url, header) for header in made_up)
            )
            assert statuses == [401] * 40
            assert len(fetches) <= 2
            [result] = await simulate(
                gateway.url,
                [b"\x10\x00" * 8000],
                linger_s=0.2,
                headers={"Authorization": f"Bearer {token(signing_key)}"},
            )
            assert result.completed, result.error
