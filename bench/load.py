"""A lean ACS load generator for the benchmarks (asyncio, one process).

Frames are pre-encoded once: every call sends the same few distinct AudioData messages, so the
generator spends its time in the WebSocket layer, not in JSON or base64. Real-time runs use one
absolute-schedule ticker for all calls, with calls spread evenly over the 20 ms frame period
(as independent calls arrive at a real gateway).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from callstream.shared.audio import FRAME_MS, frame_bytes_for
from callstream.simulate import metadata_message

SUBSLOTS = 10  # calls are spread over this many sub-slots of the 20 ms period


def frame_messages(rate_hz: int, count: int = 50, seed: int = 7) -> list[str]:
    """``count`` distinct, non-silent AudioData messages (noise at -20 dBFS)."""
    rng = np.random.default_rng(seed)
    samples = frame_bytes_for(rate_hz) // 2
    messages = []
    for i in range(count):
        pcm = (rng.normal(0, 3000, samples)).clip(-32768, 32767).astype("<i2").tobytes()
        messages.append(
            json.dumps(
                {
                    "kind": "AudioData",
                    "audioData": {
                        "timestamp": f"2024-11-15T19:16:{12 + i // 50:02d}.{(i % 50) * 20:03d}Z",
                        "data": base64.b64encode(pcm).decode(),
                        "silent": False,
                    },
                }
            )
        )
    return messages


async def open_calls(
    url: str, n: int, rate_hz: int, *, prefix: str = "bench"
) -> list[ClientConnection]:
    """Open ``n`` calls (``{url}/{prefix}-{i}``) and send each its AudioMetadata."""
    meta = metadata_message(rate_hz)
    semaphore = asyncio.Semaphore(50)

    async def one(i: int) -> ClientConnection:
        async with semaphore:
            conn = await connect(
                f"{url}/{prefix}-{i}-{uuid.uuid4().hex[:6]}",
                compression=None,
                max_queue=None,
                open_timeout=30,
            )
            await conn.send(meta)
            return conn

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def close_calls(conns: list[ClientConnection]) -> None:
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


@dataclass
class LoadStats:
    frames_sent: int = 0
    seconds: float = 0.0
    lateness_ms: list[float] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames_sent / self.seconds if self.seconds else 0.0


async def run_realtime(
    conns: list[ClientConnection], messages: list[str], seconds: float
) -> LoadStats:
    """Every call sends one frame per 20 ms for ``seconds``, on an absolute schedule."""
    loop = asyncio.get_running_loop()
    stats = LoadStats()
    groups = [conns[i::SUBSLOTS] for i in range(SUBSLOTS)]
    slot_s = FRAME_MS / 1000 / SUBSLOTS
    ticks = int(seconds * 1000 / FRAME_MS) * SUBSLOTS
    t0 = loop.time() + 0.05
    started = time.perf_counter()
    for tick in range(ticks):
        due = t0 + tick * slot_s
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stats.lateness_ms.append((loop.time() - due) * 1000)
        message = messages[(tick // SUBSLOTS) % len(messages)]
        for conn in groups[tick % SUBSLOTS]:
            await conn.send(message)
        stats.frames_sent += len(groups[tick % SUBSLOTS])
    stats.seconds = time.perf_counter() - started
    return stats


async def run_maxrate(
    conns: list[ClientConnection], messages: list[str], seconds: float
) -> LoadStats:
    """Every connection sends frames back to back for ``seconds`` (backpressure permitting)."""
    stats = LoadStats()
    deadline = time.perf_counter() + seconds

    async def pump(conn: ClientConnection) -> int:
        sent = 0
        n = len(messages)
        while time.perf_counter() < deadline:
            for _ in range(10):
                await conn.send(messages[sent % n])
                sent += 1
        return sent

    started = time.perf_counter()
    counts = await asyncio.gather(*(pump(c) for c in conns))
    stats.seconds = time.perf_counter() - started
    stats.frames_sent = sum(counts)
    return stats
