"""A rolling restart of the workers under a live call (how Kubernetes replaces a Deployment's
pods): for each kind, a new replica starts and then an old one gets SIGTERM, one at a time,
twice, while the call streams. Nothing may be lost or published twice."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.simulate import simulate
from callstream.speech import piper_available, say
from tests.helpers import (
    events,
    gateway_process,
    wait_for_entry,
    wait_for_event,
    word_error_rate,
    worker_process,
)
from tests.integration.test_transcribe import finals, offline

RATE = 16000
# How far an utterance's onset may move between two decodes of the same speech: the call's
# clock starts at its first frame as the gateway saw it, and the VAD's onset can move by a frame
# or two with it (seen: 40 ms). A lost or cut utterance moves by seconds.
ONSET_TOLERANCE_TICKS = 2_000_000  # 200 ms in 100-ns ticks
SCRIPT = (
    "hello i have a question about my bill",
    "i was charged twice this month and i am not happy about it",
    "can you please refund the second charge",
    "thank you that would be great",
)


def speech() -> bytes:
    """The script read aloud with pauses, one track (a mixed call)."""
    gap = bytes(int(RATE * 1.5) * 2)
    audio = bytearray(bytes(RATE))  # 0.5 s lead
    for line in SCRIPT:
        audio += say(line, RATE) + gap
    audio += bytes((-len(audio)) % (RATE // 50 * 2))
    return bytes(audio)


class Replicas:
    """Worker processes of one kind, started and stopped one by one."""

    def __init__(self, settings: Settings, kind: str) -> None:
        self._settings, self._kind = settings, kind
        self._running: collections.deque[contextlib.AbstractAsyncContextManager[object]] = (
            collections.deque()
        )
        self._started = 0

    async def start(self) -> None:
        self._started += 1
        cm = worker_process(
            self._settings,
            self._kind,
            "--consumer",
            f"{self._kind}-{self._started}",
            "--heartbeat-s",
            "0.3",
        )
        await cm.__aenter__()
        self._running.append(cm)

    async def stop_oldest(self) -> None:
        """SIGTERM; it must hand its calls back and exit 0."""
        await self._running.popleft().__aexit__(None, None, None)

    async def roll(self) -> None:
        await self.start()
        await self.stop_oldest()

    async def aclose(self) -> None:
        while self._running:
            await self.stop_oldest()


@contextlib.asynccontextmanager
async def replicas(settings: Settings, kind: str) -> AsyncIterator[Replicas]:
    group = Replicas(settings, kind)
    try:
        yield group
    finally:
        await group.aclose()


def is_final(fields: dict[bytes, bytes]) -> bool:
    if fields.get(b"type") != b"transcript":
        return False
    return bool(Event.from_fields(fields).data["resultStatus"] == "Final")


@pytest.mark.timeout(240)
async def test_a_rolling_restart_of_every_worker_kind_loses_and_repeats_nothing(
    settings: Settings, redis: aioredis.Redis
) -> None:
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    audio = await asyncio.to_thread(speech)
    expected = finals(await asyncio.to_thread(offline, audio))
    key = settings.keys.call_events("rolled")
    async with (
        gateway_process(settings) as url,
        replicas(settings, "transcribe") as transcribe,
        replicas(settings, "nlp") as nlp,
    ):
        await transcribe.start()
        await nlp.start()
        call = asyncio.create_task(simulate(url, [audio], rate_hz=RATE, call_ids=["rolled"]))
        await wait_for_entry(redis, key, is_final, 60)  # into the call
        for _ in range(2):  # replace every replica, one at a time, twice
            await transcribe.roll()
            await nlp.roll()
        [result] = await call
        assert result.error is None
        await wait_for_event(redis, key, "nlp.done", 90)
    published = await events(redis, key)
    counts = collections.Counter(e.id for e in published)
    assert [i for i, n in counts.items() if n > 1] == []  # nothing twice
    heard = finals(published)
    # Nothing lost: an utterance for each of the whole audio decoded at once, in order, where it
    # was (ONSET_TOLERANCE_TICKS), whole (its words, but for the odd one a frame's shift makes
    # the recogniser hear another way — 'refund' as 'riff on': 2 of 7 words — while a final cut
    # at a hand-over would lose half of them or more).
    assert len(heard) == len(expected)
    for got, want in zip(heard, expected, strict=True):
        assert abs(got.data["offset"] - want.data["offset"]) <= ONSET_TOLERANCE_TICKS
        assert word_error_rate(want.data["text"], got.data["text"]) <= 0.34, (got, want)
    sentiments = [e.data["utterance"] for e in published if e.type == "nlp.sentiment"]
    assert sorted(sentiments) == sorted(e.id for e in heard)  # an insight for every final
    assert [e.type for e in published].count("nlp.summary") == 1
    [summary] = [e.data for e in published if e.type == "nlp.summary"]
    assert summary["utterances"] == len(heard)
