"""``REDIS_URL`` read exactly as redis-py reads it, for the gateway's own publishing connection.

The publisher speaks RESP on its own :class:`asyncio.Protocol` (see ``publisher.py``), so it
cannot hand the URL to redis-py; but the URL must mean the same to it as to every other process
(workers and the gateway's own redis-py client use ``redis.asyncio.Redis.from_url``). So nothing
here parses URLs: redis-py's ``parse_url`` does, and the connection object redis-py would build
from the result is constructed (never connected) to read back where it would connect, as whom,
to which database and with which TLS context. Every scheme and parameter redis-py takes is taken
(``redis://``, ``rediss://``, ``unix://``; user and password percent-decoded; ``/N`` or
``?db=N``; ``ssl_*``); a URL redis-py would refuse, at once or at its first connection, is a
:class:`~callstream.shared.errors.ConfigError` here.

The publisher honours host, port, socket path, database, username, password, TLS and
``socket_connect_timeout``. Parameters that only tune redis-py's own client (``socket_timeout``,
``health_check_interval``, ``client_name``, ``protocol``, ...) are accepted and do not change
the publisher, which has its own timeouts and name.

Sans-I/O: :func:`parse_redis_url` reads no file and opens no socket (``RedisTarget.tls`` loads
certificates only when its ``get()`` is called).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    RedisSSLContext,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from callstream.shared.errors import ConfigError

DEFAULT_CONNECT_TIMEOUT_S = 2.0

# Consumed by redis-py's ConnectionPool rather than by its connections.
_POOL_PARAMETERS = frozenset({"max_connections"})


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where, as whom and how to connect: what redis-py's connection for the URL holds."""

    host: str = "localhost"
    port: int = 6379
    unix_path: str | None = None  # a unix:// socket (host and port then mean nothing)
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs or tracebacks
    tls: RedisSSLContext | None = None  # redis-py's own TLS settings, for rediss://
    connect_timeout_s: float | None = DEFAULT_CONNECT_TIMEOUT_S

    def auth_args(self) -> tuple[str, ...] | None:
        """``AUTH``'s arguments as redis-py sends them (none without username or password)."""
        if not (self.username or self.password):
            return None
        if self.username:
            return (self.username, self.password or "")
        return (self.password or "",)

    def setup_commands(self, client_name: str) -> list[tuple[str | int, ...]]:
        """What a new connection sends first: AUTH and SELECT as the URL asks, then its name."""
        commands: list[tuple[str | int, ...]] = []
        if (auth := self.auth_args()) is not None:
            commands.append(("AUTH", *auth))
        if self.db:
            commands.append(("SELECT", self.db))
        commands.append(("CLIENT", "SETNAME", client_name))
        return commands

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for rediss:// (None otherwise), its files loaded now: a wrong path
        is a configuration error at startup, not a failed call later."""
        if self.tls is None:
            return None
        try:
            context: ssl.SSLContext = self.tls.get()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"REDIS_URL: cannot set up TLS: {exc}") from None
        return context

    def describe(self) -> str:
        """Where this connects, for logs (never the credentials)."""
        if self.unix_path is not None:
            where = f"unix:{self.unix_path}"
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            where = f"{'rediss' if self.tls is not None else 'redis'}://{host}:{self.port}"
        user = f" as {self.username}" if self.username else ""
        return f"{where} db {self.db}{user}"


def parse_redis_url(
    url: str, *, connect_timeout_s: float | None = DEFAULT_CONNECT_TIMEOUT_S
) -> RedisTarget:
    """The target of ``url`` as ``redis.asyncio.Redis.from_url(url,
    socket_connect_timeout=connect_timeout_s)`` would connect to it; ConfigError when redis-py
    would not accept the URL."""
    safe = redact(url)
    try:
        options: dict[str, Any] = dict(parse_url(url))
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL {safe}: {exc}") from None
    connection_class: type[AbstractConnection] = options.pop("connection_class", Connection)
    for name in _POOL_PARAMETERS:
        options.pop(name, None)
    options = {"socket_connect_timeout": connect_timeout_s, **options}  # the URL's wins
    try:
        connection = connection_class(**options)
    except TypeError as exc:  # a parameter this kind of connection does not take
        raise ConfigError(f"REDIS_URL {safe}: {_unexpected(exc)}") from None
    except (RedisError, ValueError) as exc:
        raise ConfigError(f"REDIS_URL {safe}: {exc}") from None
    if isinstance(connection, UnixDomainSocketConnection):
        if not connection.path:
            raise ConfigError(f"REDIS_URL {safe}: a unix:// URL needs the socket's path")
        host, port, unix_path, tls = "localhost", 6379, connection.path, None
    else:
        assert isinstance(connection, Connection)
        host, port, unix_path = connection.host, connection.port, None
        tls = connection.ssl_context if isinstance(connection, SSLConnection) else None
    return RedisTarget(
        host=host,
        port=port,
        unix_path=unix_path,
        db=int(connection.db),
        username=connection.username or None,
        password=connection.password or None,
        tls=tls,
        connect_timeout_s=connection.socket_connect_timeout,
    )


_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")


def _unexpected(exc: TypeError) -> str:
    match = _UNEXPECTED.search(str(exc))
    if match is None:
        return str(exc)
    name = match.group(1)
    if name.startswith("ssl_"):
        return f"{name} applies to rediss:// URLs only"
    return f"unknown parameter {name!r} (redis-py does not accept it either)"


def redact(url: str) -> str:
    """``url`` without its password (in the userinfo or a ``password=`` parameter)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    tail = re.sub(r"([?&](?:ssl_)?password=)[^&#]*", r"\1***", tail)
    return f"{scheme}://{netloc}{tail}"


def dead_connection_retry() -> Retry:
    """redis-py's retry for a pooled connection that Redis closed (restarted, or a client
    timeout): the command fails once, on that connection, and is sent again on a new one.
    redis-py's asyncio client retries nothing by default."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
