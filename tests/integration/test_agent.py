"""The voice agent with real processes (gateway, transcriber, agent), a real Redis and the
emulator as the caller: it greets the caller, answers a spoken question with the flow's reply,
and what it says is heard in the call (the recording, transcribed again)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from callstream.shared.settings import Settings
from callstream.simulate import simulate
from callstream.speech import piper_available, say
from tests.helpers import events, gateway_process, wait_for_event, worker_process
from tests.integration.test_transcribe import finals, offline

RATE = 16000
QUESTION = "can you please refund the second charge"


def caller() -> bytes:
    """Silence while the agent greets, the question, then silence for the answer."""
    audio = bytes(6 * RATE * 2) + say(QUESTION, RATE) + bytes(12 * RATE * 2)
    return audio + bytes((-len(audio)) % (RATE // 50 * 2))


def words(pcm: bytes) -> set[str]:
    return {w for e in finals(offline(pcm)) for w in str(e.data["text"]).split()}


@pytest.mark.timeout(180)
async def test_the_agent_greets_and_answers_a_question_in_the_call(
    settings: Settings, redis: aioredis.Redis
) -> None:
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    audio = await asyncio.to_thread(caller)
    key = settings.keys.call_events("agent-1")
    async with (
        gateway_process(settings) as url,
        worker_process(settings, "transcribe"),
        worker_process(settings, "agent"),
    ):
        [result] = await simulate(url, [audio], rate_hz=RATE, call_ids=["agent-1"], linger_s=8)
        assert result.error is None
        await wait_for_event(redis, key, "agent.done", 60)
    published = await events(redis, key)
    turns = [e for e in published if e.type == "agent.turn"]
    greeting, answer = turns[:2]
    assert greeting.data["turn"] == 1
    assert greeting.data["reply_to"] is None
    assert greeting.data["text"].startswith("Hello, thanks for calling")
    [question] = finals(published)
    assert answer.data["reply_to"] == question.id
    assert answer.data["intent"] == "refund"
    assert answer.data["text"].startswith("Refunds are made to your original payment method")
    assert answer.data["audio_ms"] > 1000
    # What the caller heard: the greeting, then the answer (transcribed from the recording).
    assert result.frames_received > 0
    heard = await asyncio.to_thread(words, result.recording)
    assert len(heard & {"thanks", "calling", "help", "today"}) >= 2, heard
    assert len(heard & {"refunds", "refund", "payment", "method", "working", "days"}) >= 3, heard
