"""REDIS_URL means the same to the gateway's publisher as to redis-py.

First the pure mapping from a URL to what the publisher connects to (checked against redis-py's
own pool for the same URL), then gateways against a private redis-server that listens on a unix
socket and only serves an ACL user: they publish into a database other than 0, and a wrong
password is refused clearly instead of crashing anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import logging
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from callstream.bus.publisher import (
    PUBLISHER_CLIENT_NAME,
    Publisher,
    refuses_every_call,
)
from callstream.bus.url import RedisTarget, parse_redis_url, redact
from callstream.ingress.metrics import IngressMetrics
from callstream.ingress.server import Gateway
from callstream.localredis import server_args
from callstream.shared.audio import chunk, is_silent
from callstream.shared.errors import ConfigError
from callstream.shared.settings import Settings
from callstream.simulate import simulate
from callstream.workers.echo import echo_factory
from callstream.workers.runtime import WorkerRuntime
from tests.helpers import free_port, until, wait_for_end, xrange

USER = "alice"
PASSWORD = "p@ss:w/rd %1"  # every character that needs percent-encoding in a URL's userinfo
QUOTED = quote(PASSWORD, safe="")

# ------------------------------------------------------------------ the mapping (pure)


def test_a_tcp_url_carries_an_acl_user_percent_decoded_and_the_database_of_its_path() -> None:
    target = parse_redis_url(f"redis://{USER}:{QUOTED}@127.0.0.1:7001/5")
    assert target == RedisTarget(
        host="127.0.0.1", port=7001, db=5, username=USER, password=PASSWORD
    )
    assert target.setup_commands("me") == [
        ("AUTH", USER, PASSWORD),
        ("SELECT", 5),
        ("CLIENT", "SETNAME", "me"),
    ]


def test_a_unix_url_takes_its_database_and_credentials_from_the_query() -> None:
    target = parse_redis_url("unix:///run/redis/redis.sock?db=3&password=s%26cret")
    assert target.unix_path == "/run/redis/redis.sock"
    assert (target.db, target.username, target.password) == (3, None, "s&cret")
    assert target.tls is None
    assert target.setup_commands("me") == [
        ("AUTH", "s&cret"),
        ("SELECT", 3),
        ("CLIENT", "SETNAME", "me"),
    ]
    with_user = parse_redis_url(f"unix://{USER}:{QUOTED}@/tmp/r.sock?db=2")
    assert (with_user.unix_path, with_user.db) == ("/tmp/r.sock", 2)
    assert with_user.auth_args() == (USER, PASSWORD)


def test_defaults_and_what_redis_py_makes_of_odd_urls() -> None:
    bare = parse_redis_url("redis://")
    assert (bare.host, bare.port, bare.db, bare.auth_args()) == ("localhost", 6379, 0, None)
    assert bare.setup_commands("me") == [("CLIENT", "SETNAME", "me")]  # no AUTH, no SELECT
    assert parse_redis_url("redis://h/2?db=7").db == 7  # the query wins over the path
    assert parse_redis_url("redis://h/notanumber").db == 0  # redis-py ignores such a path
    assert parse_redis_url("redis://user@h").auth_args() == ("user", "")  # as redis-py sends
    assert parse_redis_url("redis://:secret@h").auth_args() == ("secret",)
    ipv6 = parse_redis_url("redis://[::1]:6390/1")
    assert (ipv6.host, ipv6.port, ipv6.describe()) == ("::1", 6390, "redis://[::1]:6390 db 1")
    # The gateway's connect timeout unless the URL sets one, as with from_url(..., timeout).
    assert parse_redis_url("redis://h", connect_timeout_s=2.0).connect_timeout_s == 2.0
    assert parse_redis_url("redis://h?socket_connect_timeout=0.5").connect_timeout_s == 0.5
    # redis-py client tuning is accepted and does not change where the publisher connects.
    tuned = parse_redis_url("redis://h:7/1?socket_timeout=3&health_check_interval=10&protocol=3")
    assert (tuned.host, tuned.port, tuned.db) == ("h", 7, 1)


def test_rediss_takes_redis_py_tls_defaults_and_parameters() -> None:
    strict = parse_redis_url("rediss://redis.example:6380/1")
    assert strict.tls is not None
    assert strict.tls.cert_reqs == ssl.CERT_REQUIRED  # redis-py's SSLConnection defaults
    assert strict.tls.check_hostname is True
    assert strict.describe() == "rediss://redis.example:6380 db 1"
    custom = parse_redis_url(
        "rediss://h?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/k.pem"
        "&ssl_check_hostname=false&ssl_cert_reqs=optional"
    )
    assert custom.tls is not None
    assert (custom.tls.ca_certs, custom.tls.certfile, custom.tls.keyfile) == (
        "/etc/ca.pem",
        "/etc/c.pem",
        "/etc/k.pem",
    )
    assert (custom.tls.cert_reqs, custom.tls.check_hostname) == (ssl.CERT_OPTIONAL, False)
    unverified = parse_redis_url("rediss://h?ssl_cert_reqs=none")
    assert unverified.tls is not None
    assert (unverified.tls.cert_reqs, unverified.tls.check_hostname) == (ssl.CERT_NONE, False)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        f"redis://{USER}:{QUOTED}@10.0.0.1:7000/5",
        "redis://:pw@h/3?db=4",
        "rediss://h:6380/2?ssl_cert_reqs=none",
        "unix:///tmp/redis.sock?db=3&password=x",
        f"unix://{USER}:{QUOTED}@/tmp/redis.sock?db=9",
    ],
)
def test_the_target_is_what_redis_py_connects_to(url: str) -> None:
    pool = aioredis.ConnectionPool.from_url(url)
    kwargs = pool.connection_kwargs
    target = parse_redis_url(url)
    if target.unix_path is not None:
        assert kwargs["path"] == target.unix_path
    else:
        assert (kwargs.get("host", "localhost"), kwargs.get("port", 6379)) == (
            target.host,
            target.port,
        )
    assert int(kwargs.get("db", 0)) == target.db
    assert kwargs.get("username") == target.username
    assert kwargs.get("password") == target.password
    assert (pool.connection_class.__name__ == "SSLConnection") == (target.tls is not None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "one of the following schemes"),
        ("redis://h?colour=blue", "unknown parameter 'colour'"),
        ("redis://h?ssl_ca_certs=/etc/ca.pem", "ssl_ca_certs applies to rediss:// URLs only"),
        ("redis://h?db=three", "Invalid value for 'db'"),
        ("redis://h:99999/0", "Port out of range"),
        ("redis://h:port/0", "Port could not be cast"),
        ("unix://?db=3", "needs the socket's path"),
        ("rediss://h?ssl_cert_reqs=maybe", "Invalid SSL Certificate Requirements Flag"),
        ("redis://[::1", "Invalid IPv6 URL"),
    ],
)
def test_urls_redis_py_would_refuse_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^REDIS_URL ") as refused:
        parse_redis_url(url)
    assert message in str(refused.value)


def test_errors_and_descriptions_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_redis_url(f"redis://{USER}:{QUOTED}@h/0?colour=blue")
    assert QUOTED not in str(refused.value)
    assert f"redis://{USER}:***@h/0?colour=blue" in str(refused.value)
    assert redact("unix:///s?password=x&db=2") == "unix:///s?password=***&db=2"
    assert redact("redis://h/0") == "redis://h/0"
    assert PASSWORD not in parse_redis_url(f"redis://{USER}:{QUOTED}@h").describe()


def test_error_replies_that_refuse_every_call_are_told_apart_from_per_key_ones() -> None:
    assert refuses_every_call("OOM command not allowed when used memory > 'maxmemory'.")
    assert refuses_every_call("MISCONF Redis is configured to save RDB snapshots, but ...")
    assert refuses_every_call("READONLY You can't write against a read only replica.")
    assert refuses_every_call("NOPERM User gw has no permissions to run the 'xadd' command")
    assert not refuses_every_call(
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    )
    assert not refuses_every_call("ERR The ID specified in XADD is equal or smaller")


# ------------------------------------------------------------------ against a real server


class AclRedis:
    """A private redis-server on a TCP port and a unix socket that serves only USER (the
    default user is off), with PASSWORD."""

    def __init__(self) -> None:
        # A unix socket's path must stay short (108 bytes): not under pytest's tmp_path.
        self.workdir = Path(tempfile.mkdtemp(prefix="cs-redis-", dir="/tmp"))
        self.socket_path = str(self.workdir / "redis.sock")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int, password: str = QUOTED) -> str:
        return f"redis://{USER}:{password}@127.0.0.1:{self.port}/{db}"

    def unix_url(self, db: int) -> str:
        return f"unix://{USER}:{QUOTED}@{self.socket_path}?db={db}"

    def client(self, db: int) -> aioredis.Redis:
        return aioredis.Redis(
            unix_socket_path=self.socket_path, db=db, username=USER, password=PASSWORD
        )

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is needed for this test"
        args = [
            *server_args(self.port, str(self.workdir)),
            "--unixsocket",
            self.socket_path,
            "--unixsocketperm",
            "700",
            "--user",
            USER,
            "on",
            f">{PASSWORD}",
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ]
        self.proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(0.2)
                    sock.connect(self.socket_path)
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"-NOAUTH"):  # up, and asking for a user
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def acl_redis() -> Iterator[AclRedis]:
    server = AclRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
async def admin(acl_redis: AclRedis) -> AsyncIterator[aioredis.Redis]:
    """A client of database 0 of the ACL server (as USER)."""
    client = acl_redis.client(0)
    yield client
    await client.aclose()


async def publisher_client(admin: aioredis.Redis) -> dict[str, str]:
    """The gateway publisher's entry in CLIENT LIST."""
    clients = [c for c in await admin.client_list() if c["name"] == PUBLISHER_CLIENT_NAME]
    assert len(clients) == 1, clients
    return clients[0]


@pytest.mark.parametrize("scheme", ["unix", "tcp"])
async def test_a_gateway_publishes_as_the_url_s_user_into_the_url_s_database(
    settings: Settings, acl_redis: AclRedis, admin: aioredis.Redis, scheme: str
) -> None:
    db = 3 if scheme == "unix" else 5
    url = acl_redis.unix_url(db) if scheme == "unix" else acl_redis.url(db)
    local = dataclasses.replace(settings, redis_url=url)
    async with Gateway(local) as gateway:
        [result] = await simulate(
            gateway.url, [b"\x10\x00" * 3200], call_ids=[f"via-{scheme}"], linger_s=0.2
        )
        assert result.completed, result.error or result.close_reason
        publisher = await publisher_client(admin)
    assert (publisher["user"], publisher["db"]) == (USER, str(db))
    assert (publisher["addr"].startswith("/")) == (scheme == "unix")  # a unix socket peer
    key = local.keys.call_in(f"via-{scheme}")
    database = acl_redis.client(db)
    try:
        stored = await wait_for_end(database, key)
        audio = [fields for _, fields in stored if fields[b"kind"] == b"audio"]
        assert len(audio) == result.frames_sent == 10
        started = await xrange(database, local.keys.calls)
        assert [fields[b"type"] for _, fields in started] == [b"started", b"ended"]
        # The health check (redis-py) wrote into the same database.
        health = [k async for k in database.scan_iter(match=f"{settings.prefix}:gateway:*")]
        assert len(health) == 1
    finally:
        await database.aclose()
    assert await admin.exists(key) == 0  # nothing in database 0


async def test_a_wrong_password_leaves_the_gateway_unready_and_says_why(
    settings: Settings, acl_redis: AclRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callstream.ingress")
    local = dataclasses.replace(settings, redis_url=acl_redis.url(5, password="wrong%20one"))
    async with Gateway(local) as gateway:
        status, body = await http_get(f"http://127.0.0.1:{gateway.port}/readyz")
        assert status == 503
        assert body == "Redis unavailable: invalid username-password pair or user is disabled.\n"
        [refused] = await simulate(gateway.url, [b"\x10\x00" * 1600], call_ids=["no-entry"])
        assert refused.error is not None
        assert refused.error.startswith("server refused the call: HTTP 503")
        assert "invalid username-password pair" in refused.error
        assert gateway.registry.get_sample_value("callstream_ingress_redis_writable") == 0
        assert (await http_get(f"http://127.0.0.1:{gateway.port}/healthz"))[0] == 200
    [startup] = [r for r in caplog.records if "gateway listening" in r.getMessage()]
    assert startup.levelno == logging.ERROR
    assert startup.getMessage().endswith(
        f"not ready: Redis at redis://127.0.0.1:{acl_redis.port} db 5 as {USER} unavailable: "
        "invalid username-password pair or user is disabled."
    )
    assert not [r for r in caplog.records if "wrong one" in r.getMessage()]


async def test_a_password_changed_under_a_running_gateway_closes_its_calls_1011(
    settings: Settings,
    acl_redis: AclRedis,
    admin: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The publisher reconnects with the URL's password, which Redis no longer takes: the
    call streaming is closed with 1011 and the reason, the gateway turns unready."""
    caplog.set_level(logging.INFO, logger="callstream.ingress")
    local = dataclasses.replace(settings, redis_url=acl_redis.url(2))
    async with Gateway(local) as gateway:
        call = asyncio.create_task(
            simulate(gateway.url, [b"\x10\x00" * 16000 * 10], call_ids=["rotated"], linger_s=0.2)
        )

        async def flowing() -> bool:
            frames = gateway.registry.get_sample_value("callstream_ingress_frames_total")
            return frames not in (None, 0.0)

        await until(flowing)
        await admin.acl_setuser(USER, enabled=True, reset_passwords=True, passwords=["+rotated"])
        await admin.client_kill_filter(user=USER)  # the gateway's connections (and this one)
        [result] = await call
        assert result.close_code == 1011
        assert result.close_reason == (
            "event bus unavailable: Redis refused the connection setup: WRONGPASS invalid "
            "username-password pair or user is disabled."
        )
        assert result.frames_sent < 50 * 8  # closed long before its 10 s were sent
        status, body = await http_get(f"http://127.0.0.1:{gateway.port}/readyz")
        assert status == 503
        assert "WRONGPASS" in body or "invalid username-password pair" in body
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("refused the connection setup: WRONGPASS" in message for message in errors)


async def test_the_publisher_reports_a_refused_setup_for_its_calls_and_for_every_call(
    acl_redis: AclRedis,
) -> None:
    failures: list[tuple[str, str, bool]] = []
    bus: list[str] = []

    def on_failure(call_id: str, error: str, bus_wide: bool) -> None:
        failures.append((call_id, error, bus_wide))

    metrics = IngressMetrics(CollectorRegistry())
    url = acl_redis.url(1, password="nope")
    async with asyncio.timeout(10):
        async with Publisher(url, metrics, on_failure, on_bus_failure=bus.append) as publisher:
            publisher.publish("c1", b"*1\r\n$4\r\nPING\r\n")
            await publisher.drain()
    reason = (
        "Redis refused the connection setup: WRONGPASS invalid username-password pair or user "
        "is disabled."
    )
    assert failures == [("c1", reason, True)]
    assert bus == [reason]
    assert publisher.backlog_bytes == 0


# ------------------------------------------------------------------ TLS


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callstream test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(params=["TLSv1.2", "TLSv1.3"])
def tls_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, Path]]:
    """A private redis-server that speaks TLS only, in each TLS version: (its port, the CA's
    PEM file). (TLS 1.2 sends nothing after the handshake; a client that waits to be told it
    may write, as asyncio's TLS transport once made the publisher do, never writes.)"""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is needed for this test"
    ca, cert, key = write_tls_files(tmp_path)
    port = free_port()
    args = [
        *server_args(0, str(tmp_path)),
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
        "--tls-protocols",
        request.param,
    ]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
    try:
        context = ssl.create_default_context(cafile=str(ca))
        deadline = time.monotonic() + 10
        while True:
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
                ):
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                assert time.monotonic() < deadline, "redis-server (TLS) did not start"
                time.sleep(0.05)
        yield port, ca
    finally:
        proc.kill()
        proc.wait()


async def test_a_gateway_publishes_over_tls_verifying_the_server_with_the_url_s_ca(
    settings: Settings, tls_redis: tuple[int, Path]
) -> None:
    port, ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/4?ssl_ca_certs={quote(str(ca))}"
    local = dataclasses.replace(settings, redis_url=url)
    async with Gateway(local) as gateway:
        [result] = await simulate(
            gateway.url, [b"\x10\x00" * 3200], call_ids=["via-tls"], linger_s=0.2
        )
        assert result.completed, result.error or result.close_reason
    client = aioredis.Redis.from_url(url)
    try:
        stored = await wait_for_end(client, local.keys.call_in("via-tls"))
        assert sum(fields[b"kind"] == b"audio" for _, fields in stored) == result.frames_sent
    finally:
        await client.aclose()


async def test_the_publisher_keeps_writing_over_tls_when_replies_come_in_several_reads(
    tls_redis: tuple[int, Path],
) -> None:
    """One batch whose replies arrive apart (a PING at once, a BLPOP's 150 ms later), then
    another batch: it is written and answered too. (With write-buffer limits of 0, asyncio's TLS
    transport paused the publisher at every read: after an even number of reads for one write
    it stayed paused with nothing in flight, and the next batch was never written.)"""
    port, ca = tls_redis
    failures: list[tuple[str, str]] = []
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={quote(str(ca))}"
    registry = CollectorRegistry()
    async with asyncio.timeout(4):  # less than the publisher's flush timeout: no retry hides it
        async with Publisher(
            url,
            IngressMetrics(registry),
            lambda call_id, error, _: failures.append((call_id, error)),
        ) as publisher:
            publisher.publish("c1", b"*1\r\n$4\r\nPING\r\n")
            await publisher.drain()  # connected, set up and answered
            publisher.publish("c1", b"*1\r\n$4\r\nPING\r\n")
            publisher.publish("c1", b"*3\r\n$5\r\nBLPOP\r\n$5\r\nnokey\r\n$4\r\n0.15\r\n")
            await publisher.drain()
            for _ in range(3):
                publisher.publish("c1", b"*1\r\n$4\r\nPING\r\n")
                await publisher.drain()
    assert failures == []
    assert registry.get_sample_value("callstream_ingress_entries_published_total") == 6


async def test_a_tls_server_the_url_does_not_trust_leaves_the_gateway_unready(
    settings: Settings, tls_redis: tuple[int, Path]
) -> None:
    """Without the CA, redis-py's default (ssl_cert_reqs=required) refuses the server's
    certificate: not ready, and the reason says so; ssl_cert_reqs=none connects."""
    port, _ = tls_redis
    untrusted = dataclasses.replace(settings, redis_url=f"rediss://127.0.0.1:{port}/4")
    async with Gateway(untrusted) as gateway:
        status, body = await http_get(f"http://127.0.0.1:{gateway.port}/readyz")
        assert status == 503
        assert "certificate verify failed" in body
        failures: list[tuple[str, str]] = []
        async with Publisher(
            untrusted.redis_url,
            IngressMetrics(CollectorRegistry()),
            lambda call_id, error, _: failures.append((call_id, error)),
        ) as publisher:
            publisher.publish("c1", b"*1\r\n$4\r\nPING\r\n")
            await publisher.drain()
        [(call_id, error)] = failures
        assert call_id == "c1"
        assert error.startswith("cannot connect to Redis:")
        assert "certificate verify failed" in error
    unverified = dataclasses.replace(
        settings, redis_url=f"rediss://127.0.0.1:{port}/4?ssl_cert_reqs=none"
    )
    async with Gateway(unverified) as gateway:
        assert (await http_get(f"http://127.0.0.1:{gateway.port}/readyz"))[0] == 200


async def test_a_url_redis_py_refuses_stops_the_gateway_before_it_starts(
    settings: Settings,
) -> None:
    bad = dataclasses.replace(settings, redis_url="redis://127.0.0.1:6379/0?colour=blue")
    with pytest.raises(ConfigError, match="unknown parameter 'colour'"):
        Gateway(bad)
    missing_ca = dataclasses.replace(
        settings, redis_url="rediss://127.0.0.1:6379/0?ssl_ca_certs=/nonexistent/ca.pem"
    )
    with pytest.raises(ConfigError, match="REDIS_URL: cannot set up TLS"):
        async with Gateway(missing_ca):
            pass


async def http_get(url: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(get)


async def test_the_whole_pipeline_runs_as_the_url_s_user_in_the_url_s_database(
    settings: Settings, acl_redis: AclRedis, admin: aioredis.Redis
) -> None:
    """Gateway (publisher, egress's reader, health check) and an echo replica (its shared
    reader, writer and redis-py pool) all understand one unix:// URL with a user, a password
    and a database: the caller hears its audio back, and every connection they made is the
    URL's user in the URL's database."""
    url = acl_redis.unix_url(3)
    local = dataclasses.replace(settings, redis_url=url)
    speech = b"\x10\x10" * 3200  # 10 loud frames
    async with Gateway(local) as gateway, WorkerRuntime(local, "echo", echo_factory()):
        [result] = await simulate(gateway.url, [speech], call_ids=["piped"], linger_s=1.0)
        ours = [
            c
            for c in await admin.client_list()
            if c["name"].startswith(("callstream-gateway", "callstream-worker"))
        ]
    assert result.completed, result.error or result.close_reason
    played = [frame for frame in chunk(result.recording, 640) if not is_silent(frame)]
    assert played == chunk(speech, 640)  # every frame came back, in order
    names = {c["name"] for c in ours}
    assert {PUBLISHER_CLIENT_NAME, "callstream-gateway-egress"} <= names
    assert any(name.startswith("callstream-worker-echo-") for name in names)
    assert {(c["user"], c["db"]) for c in ours} == {(USER, "3")}
