"""Start the servers under test as subprocesses, on free ports, and read their figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body.decode()


@dataclass
class Server:
    name: str
    pid: int
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


@contextlib.asynccontextmanager
async def running(
    name: str, argv: list[str], port: int, ready_path: str, env: Mapping[str, str]
) -> AsyncIterator[Server]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}{ready_path}", 1.0)
                break
            except OSError:
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start") from None
                await asyncio.sleep(0.1)
        yield Server(name, proc.pid, port)
    finally:
        await stop(proc)


async def stop(proc: asyncio.subprocess.Process, timeout_s: float = 15.0) -> None:
    """SIGTERM a child that still runs, and wait for it; SIGKILL after ``timeout_s``."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def gateway(env: Mapping[str, str]) -> tuple[list[str], int]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "callstream",
        "--log-level",
        "WARNING",
        "gateway",
        "--port",
        str(port),
    ]
    return argv, port


def worker(kind: str, *options: str) -> list[str]:
    """The command line of a ``callstream worker`` process of ``kind``."""
    return [sys.executable, "-m", "callstream", "--log-level", "WARNING", "worker", kind, *options]


def bare(env: Mapping[str, str]) -> tuple[list[str], int]:
    del env
    port = free_port()
    return [sys.executable, "-m", "bench.bare_server", "--port", str(port)], port


def bare_frames(server: Server) -> int:
    frames: int = json.loads(http_get(f"http://127.0.0.1:{server.port}/stats"))["frames"]
    return frames


def gateway_counter(server: Server, name: str = "callstream_ingress_frames_total") -> float:
    text = http_get(f"http://127.0.0.1:{server.port}/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise RuntimeError(f"{name} not found in the gateway's /metrics")


@dataclass
class Histogram:
    """A Prometheus histogram snapshot: cumulative counts per upper bound."""

    buckets: list[tuple[float, float]]
    count: float

    def minus(self, earlier: Histogram) -> Histogram:
        return Histogram(
            [(le, c - c0) for (le, c), (_, c0) in zip(self.buckets, earlier.buckets, strict=True)],
            self.count - earlier.count,
        )

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket holding the q-th observation."""
        if self.count <= 0:
            return float("nan")
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for upper_bound, cumulative in self.buckets:
            if cumulative >= rank:
                if upper_bound == float("inf"):
                    return lower_bound
                span = cumulative - lower_count
                fraction = (rank - lower_count) / span if span else 1.0
                return lower_bound + (upper_bound - lower_bound) * fraction
            lower_bound, lower_count = upper_bound, cumulative
        return lower_bound


def gateway_histogram(server: Server, name: str = "callstream_ingest_latency_seconds") -> Histogram:
    text = http_get(f"http://127.0.0.1:{server.port}/metrics")
    buckets: list[tuple[float, float]] = []
    count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == f"{name}_count":
                count = sample.value
    if not buckets:
        raise RuntimeError(f"{name} not found in the gateway's /metrics")
    buckets.sort()
    return Histogram(buckets, count)
