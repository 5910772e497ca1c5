"""The gateway's Redis client, with commands packed by hiredis.

redis-py's asyncio connection packs every command in Python (it only uses hiredis to parse
replies); at tens of thousands of XADDs a second that packing was the gateway's largest cost
(see docs/performance.md). This connection class packs with ``hiredis.pack_command`` — the C
packer redis-py's synchronous client already uses — and is otherwise redis-py's own.
"""

from __future__ import annotations

import socket
import ssl
from typing import cast
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.typing import EncodableT


class HiredisPackingConnection(aioredis.Connection):
    """A TCP connection whose commands are packed by hiredis."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        first = args[0]
        # A multi-word command name ("CONFIG GET") is sent as separate arguments.
        if isinstance(first, str | bytes) and (
            " " in first if isinstance(first, str) else b" " in first
        ):
            args = (*first.split(), *args[1:])
        packed: bytes = hiredis.pack_command(cast(tuple[str | int | float | bytes], args))
        return [packed]


def connect(url: str, *, socket_connect_timeout: float = 2.0) -> aioredis.Redis:
    """A client for ``url``; plain ``redis://`` URLs get the hiredis-packing connection.

    No per-read socket timeout: callers bound their own waits (redis-py would otherwise enter a
    timeout context for every reply).
    """
    if urlsplit(url).scheme == "redis":
        pool = aioredis.ConnectionPool.from_url(
            url,
            connection_class=HiredisPackingConnection,
            socket_connect_timeout=socket_connect_timeout,
            socket_timeout=None,
        )
        return aioredis.Redis(connection_pool=pool)
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=socket_connect_timeout, socket_timeout=None
    )


class PipelineSocket:
    """A blocking connection for one thread that sends pre-packed pipelines and reads the
    replies back in bulk with hiredis's reader: the publisher's hot path.

    redis-py's connection reads replies one call chain at a time (several Python frames per
    reply); here one ``recv`` feeds hiredis, and ``gets()`` returns every complete reply in C.
    Error replies come back as ``hiredis.ReplyError`` values, not exceptions, so one failed
    command does not hide the others' results. AUTH, SELECT and TLS (``rediss://``, verified
    against the system's CAs) follow the URL.
    """

    def __init__(self, url: str, *, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"expected a redis:// or rediss:// URL, got {parts.scheme}://")
        self._tls = parts.scheme == "rediss"
        self._address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        path = parts.path.lstrip("/")
        self._db = int(path) if path else 0
        self._timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, packed: bytes, count: int) -> list[object]:
        """Send ``packed`` (``count`` commands) and return their ``count`` replies in order.

        Raises OSError (or ConnectionError) when the connection fails; it is then closed and
        the next call reconnects.
        """
        try:
            sock = self._sock or self._connect()
            sock.sendall(packed)
            return self._read(sock, count)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self._address, timeout=self._timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._address[0])
        self._reader = hiredis.Reader()
        self._sock = sock
        setup: list[tuple[str | int | float | bytes, ...]] = []
        if self._password is not None:
            auth = (
                ("AUTH", self._username, self._password)
                if self._username
                else ("AUTH", self._password)
            )
            setup.append(auth)
        if self._db:
            setup.append(("SELECT", self._db))
        if setup:
            sock.sendall(
                b"".join(
                    hiredis.pack_command(cast(tuple[str | int | float | bytes], cmd))
                    for cmd in setup
                )
            )
            for reply in self._read(sock, len(setup)):
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError(f"Redis refused the connection setup: {reply}")
        return sock

    def _read(self, sock: socket.socket, count: int) -> list[object]:
        replies: list[object] = []
        reader = self._reader
        while len(replies) < count:
            reply = reader.gets()
            if reply is not False:
                replies.append(reply)
                continue
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("Redis closed the connection")
            reader.feed(data)
        return replies
