"""Embedded default for the demo: use the Redis at ``REDIS_URL``, or start a private one.

A private ``redis-server`` keeps nothing on disk, listens on loopback only, and is stopped when
the context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from callstream.shared.errors import ConfigError

log = logging.getLogger(__name__)


def server_args(port: int, workdir: str) -> list[str]:
    """redis-server's arguments for a private, loopback-only server that keeps nothing."""
    return [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
    ]


async def answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Redis at ``url`` answers PING within ``timeout_s``."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s)
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout_s))
    except (RedisError, OSError, TimeoutError):
        return False
    finally:
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def ensure_redis(url: str) -> AsyncIterator[str]:
    """Yield a Redis URL that answers: ``url`` itself, or a private server started here."""
    if await answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            f"no Redis answers at {url} and redis-server is not installed "
            "(Debian: apt-get install redis-server)"
        )
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="callstream-redis-") as workdir:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *server_args(port, workdir),
            "--logfile",
            "",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        local_url = f"redis://127.0.0.1:{port}/0"
        try:
            for _ in range(100):
                if await answers(local_url, timeout_s=0.2):
                    break
                if proc.returncode is not None:
                    raise ConfigError(f"redis-server exited with {proc.returncode} at start")
                await asyncio.sleep(0.05)
            else:
                raise ConfigError(f"redis-server did not answer on port {port} within 5 s")
            log.info("no Redis at %s; started a private redis-server at %s", url, local_url)
            yield local_url
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
