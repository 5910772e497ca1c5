"""The gateway's Redis client, with commands packed by hiredis.

redis-py's asyncio connection packs every command in Python (it only uses hiredis to parse
replies); at tens of thousands of XADDs a second that packing was the gateway's largest cost
(see docs/performance.md). This connection class packs with ``hiredis.pack_command`` — the C
packer redis-py's synchronous client already uses — and is otherwise redis-py's own.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import urlsplit

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
