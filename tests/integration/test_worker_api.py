"""The public worker API as a user meets it: docs/workers.md's example package, installed and
run by `callstream worker shout`; and what a gateway or an echo replica imports."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from callstream.shared.entries import CallStarted, InEnd, InFrame, encode_call, encode_in
from callstream.shared.settings import Settings
from tests.helpers import events as read_events
from tests.helpers import wait_for_event, worker_process

DOCS = Path(__file__).resolve().parents[2] / "docs" / "workers.md"


@pytest.fixture
def event_types_allowed() -> frozenset[str]:
    return frozenset({"shout"})  # the example kind's own event type


def example_files() -> dict[str, str]:
    """The files docs/workers.md marks with ``<!-- example: NAME -->``, as written there."""
    text = DOCS.read_text()
    blocks = re.findall(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    return dict(blocks)


def test_the_example_is_about_30_lines() -> None:
    files = example_files()
    assert set(files) == {"callstream_shout.py", "pyproject.toml"}
    code = [line for line in files["callstream_shout.py"].splitlines() if line.strip()]
    assert len(code) <= 35


def loud(ms: int) -> bytes:
    """A loud 440 Hz tone at 16 kHz (about -3 dBFS)."""
    t = np.arange(16 * ms) / 16000
    return (np.sin(2 * np.pi * 440 * t) * 0.7 * 32767).astype("<i2").tobytes()


async def test_the_documented_example_installs_and_runs_as_a_worker_kind(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    package = tmp_path / "callstream-shout"
    package.mkdir()
    for name, content in example_files().items():
        (package / name).write_text(content)
    site = tmp_path / "site"
    install = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(site),
            str(package),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    async with worker_process(
        settings, "shout", "--heartbeat-s", "0.2", env={"PYTHONPATH": str(site)}
    ):  # the entry point of the package just installed
        start_ms = int(time.time()) * 1000
        await redis.xadd(
            settings.keys.calls,
            encode_call(CallStarted("loud", 16000, "mixed", start_ms, "test")),
        )
        pcm = loud(20)
        async with redis.pipeline(transaction=False) as pipe:
            for seq in range(150):  # 3 s: three loud seconds
                frame = InFrame(seq, start_ms + 20 * seq, "", 0, False, pcm)
                pipe.xadd(settings.keys.call_in("loud"), encode_in(frame))
            pipe.xadd(settings.keys.call_in("loud"), encode_in(InEnd("normal")))
            await pipe.execute()
        key = settings.keys.call_events("loud")
        await wait_for_event(redis, key, "shout.done", timeout_s=30)
    events = await read_events(redis, key)
    shouts = [e for e in events if e.type == "shout"]
    assert [e.id for e in shouts] == [f"loud:shout::{start_ms // 1000 + s}" for s in range(3)]
    assert all(e.data["dbfs"] > -12 for e in shouts)


async def test_a_gateway_and_an_echo_replica_import_no_speech_engine() -> None:
    """The engines are extras: starting the CLI, a gateway and an echo replica loads neither
    PocketSphinx, WebRTC's VAD nor the Azure SDK."""
    probe = """
import sys
from callstream.cli import build_parser
from callstream.ingress.server import Gateway
from callstream.workers.cli import load_kind
build_parser()
kind = load_kind("echo")
import argparse
kind.factory(argparse.Namespace(delay_ms=0.0))
heavy = [m for m in sys.modules if m.split(".")[0] in ("pocketsphinx", "webrtcvad", "azure")]
print(",".join(heavy))
"""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == ""
