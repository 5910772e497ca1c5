"""Embedded default for the demo: use the Redis at ``REDIS_URL``, or start a private one.

A private ``redis-server`` keeps nothing on disk, listens on loopback only, and is stopped when
the context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable

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


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when its parent dies, even
    killed with SIGKILL (then it stops rather than lingering on its port)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


DIE_WITH_PARENT = _die_with_parent()


@contextlib.asynccontextmanager
async def ensure_redis(url: str, *, own_process_group: bool = False) -> AsyncIterator[str]:
    """Yield a Redis URL that answers: ``url`` itself, or a private server started here.

    ``own_process_group``: the private server runs in a process group of its own, so that the
    terminal's Ctrl-C does not stop it before the processes that use it have stopped, and gets
    SIGTERM should this process die.
    """
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
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            process_group=0 if own_process_group else None,
            preexec_fn=DIE_WITH_PARENT if own_process_group else None,
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
