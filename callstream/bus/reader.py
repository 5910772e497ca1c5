"""A blocking ``XREAD`` of many streams on one connection, its reply parsed by hiredis alone.

A worker replica reads all its calls' input, and a gateway's egress all its calls' out
streams, with one ``XREAD`` each, hundreds of times a second. Through redis-py every entry of
every reply became a dict in Python (``pairs_to_dict``) and the command was packed in Python: a
third of the echo worker's CPU in py-spy. Here the command is packed and the reply parsed by
hiredis, and entries are handed over as hiredis made them: ``[id, [field, value, …]]``
(:func:`fields` turns one into a mapping).

One command at a time: a reader belongs to one task. A read cancelled or failed half-way
leaves the connection in an unknown state, so it is closed, and the next read connects again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import hiredis

from callstream.bus.url import RedisTarget, parse_redis_url
from callstream.shared.errors import BusError

_PACK = cast(Callable[[tuple[object, ...]], bytes], hiredis.pack_command)
READ_SIZE = 256 * 1024

Entry = list[Any]  # [id: bytes, [field: bytes, value: bytes, ...]]
Reply = list[list[Any]]  # [[key: bytes, [Entry, ...]], ...]


def fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """An entry's ``[field, value, …]`` as a mapping (what redis-py would have made)."""
    it = iter(flat)
    return dict(zip(it, it, strict=True))


class StreamReader:
    """Blocking XREADs on one connection of its own."""

    def __init__(self, redis: str | RedisTarget, *, client_name: str) -> None:
        self._target = parse_redis_url(redis) if isinstance(redis, str) else redis
        self._ssl = self._target.ssl_context()
        self._setup = [_PACK(command) for command in self._target.setup_commands(client_name)]
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def __aenter__(self) -> StreamReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._drop()

    async def xread(self, streams: Mapping[str, str], *, count: int, block_ms: int) -> Reply:
        """``XREAD COUNT count BLOCK block_ms STREAMS …``: the streams that had entries after
        their ids (empty when none had any within ``block_ms``). Bound the wait with
        ``asyncio.timeout``: a read cancelled half-way closes the connection."""
        command = _PACK(
            ("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", *streams, *streams.values())
        )
        reply = await self._call(command)
        return cast(Reply, reply) if reply else []

    async def _call(self, command: bytes) -> object:
        try:
            if self._stream is None:
                await self._connect()
            assert self._stream is not None
            reader, writer = self._stream
            writer.write(command)
            return await self._reply(reader)
        except BaseException:
            self._drop()  # cancelled, or failed: the next reply on it would be this one's
            raise

    async def _connect(self) -> None:
        target = self._target
        try:
            async with asyncio.timeout(target.connect_timeout_s):
                if target.unix_path is not None:
                    stream = await asyncio.open_unix_connection(target.unix_path)
                else:
                    stream = await asyncio.open_connection(target.host, target.port, ssl=self._ssl)
        except (OSError, TimeoutError) as exc:
            raise BusError(f"cannot connect to Redis ({target.describe()}): {exc}") from None
        self._stream = stream
        reader, writer = stream
        for command in self._setup:
            writer.write(command)
            await self._reply(reader)

    async def _reply(self, reader: asyncio.StreamReader) -> object:
        parser = hiredis.Reader()
        while True:
            reply = parser.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise BusError(f"Redis refused: {reply}")
                return reply
            data = await reader.read(READ_SIZE)
            if not data:
                raise BusError("Redis closed the connection")
            parser.feed(data)

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None
