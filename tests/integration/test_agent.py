"""The voice agent with real processes (gateway, transcriber, agent), a real Redis and the
emulator as the caller: it greets the caller, answers a spoken question with the flow's reply,
and what it says is heard in the call (the recording, transcribed again)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from callstream.shared.audio import Mode, chunk, is_silent
from callstream.shared.settings import Settings
from callstream.simulate import simulate
from callstream.speech import piper_available, say
from callstream.workers.agent.tts import make_synthesizer, sentences
from tests.helpers import events, gateway_process, wait_for_entry, wait_for_event, worker_process
from tests.integration.test_agent_llm import StandIn, sse
from tests.integration.test_transcribe import finals, offline

RATE = 16000
QUESTION = "can you please refund the second charge"
# PocketSphinx hears this one word for word (it once heard QUESTION's 'refund' as 'riff on').
CANCEL = "please cancel my order"


def caller(question: str = QUESTION) -> bytes:
    """Silence while the agent greets, the question, then silence for the answer."""
    audio = bytes(6 * RATE * 2) + say(question, RATE) + bytes(12 * RATE * 2)
    return audio + bytes((-len(audio)) % (RATE // 50 * 2))


def words(pcm: bytes) -> set[str]:
    return {w for e in finals(offline(pcm)) for w in str(e.data["text"]).split()}


@pytest.mark.timeout(180)
async def test_the_agent_greets_and_answers_a_question_in_the_call(
    settings: Settings, redis: aioredis.Redis
) -> None:
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    audio = await asyncio.to_thread(caller, CANCEL)
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
    assert answer.data["intent"] == "cancel"
    assert answer.data["text"].startswith("I'm sorry to hear you want to leave")
    assert answer.data["audio_ms"] > 1000
    # What the caller heard: the greeting, then the answer (transcribed from the recording).
    assert result.frames_received > 0
    heard = await asyncio.to_thread(words, result.recording)
    assert len(heard & {"thanks", "calling", "help", "today"}) >= 2, heard
    assert len(heard & {"sorry", "leave", "cancel", "website", "fee"}) >= 3, heard


BILL_QUESTION = "hello i have a question about my bill"


@contextlib.asynccontextmanager
async def agent_replica(settings: Settings, name: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``callstream worker agent`` with a short heartbeat, until it serves; killed at the end if
    the test has not killed it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callstream", "worker", "agent", "--consumer", name,
        "--heartbeat-s", "0.3",
        env={**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    async with asyncio.timeout(60):
        while b"serving up to" not in await proc.stderr.readline():
            pass
    drain = asyncio.create_task(proc.stderr.read())
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await drain


@pytest.mark.timeout(240)
async def test_a_keypad_entry_fills_the_slot_and_a_replica_killed_mid_dialog_is_replaced(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """The caller asks about a bill; the agent asks for the account number; its replica is
    killed; the caller keys the number in; the other replica, having taken the call over,
    reads it back: the dialog went on where it was."""
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    audio = bytes(6 * RATE * 2) + await asyncio.to_thread(say, BILL_QUESTION, RATE)
    audio += bytes(24 * RATE * 2)
    audio += bytes((-len(audio)) % (RATE // 50 * 2))
    key = settings.keys.call_events("agent-2")

    def turn(n: int) -> Callable[[dict[bytes, bytes]], bool]:
        return lambda f: f[b"type"] == b"agent.turn" and f[b"id"].endswith(f":{n}".encode())

    async with (
        gateway_process(settings) as url,
        worker_process(settings, "transcribe"),
        agent_replica(settings, "first") as first,
    ):
        call = asyncio.create_task(
            simulate(url, [audio], rate_hz=RATE, call_ids=["agent-2"], dtmf=[("41123456#", 22)])
        )
        await wait_for_entry(redis, key, turn(2), 60)  # it asked for the account number
        async with agent_replica(settings, "second"):
            first.kill()
            await first.wait()
            [result] = await call
            assert result.error is None
            await wait_for_entry(redis, key, turn(3), 60)
    published = await events(redis, key)
    turns = [e for e in published if e.type == "agent.turn"]
    tones = [e for e in published if e.type == "dtmf"]
    assert "".join(t.data["tone"] for t in tones) == "41123456#"
    assert [t.data["turn"] for t in turns] == [1, 2, 3]  # none lost, none twice
    assert turns[1].data["intent"] == "billing_question"
    assert "account number" in turns[1].data["text"]
    assert turns[2].data["text"] == "I heard 4 1 1 2 3 4 5 6. Is that right?"
    assert turns[2].data["reply_to"] == tones[-1].id  # the '#' that ended the entry


def frame_aligned(audio: bytes) -> bytes:
    return audio + bytes((-len(audio)) % (RATE // 50 * 2))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["unmixed", "mixed"])
async def test_a_caller_talking_over_the_agent_stops_it(
    settings: Settings, redis: aioredis.Redis, mode: Mode
) -> None:
    """The caller starts talking while the greeting plays: the agent holds its audio at once,
    stops it (StopAudio; the rest of the greeting is not played), and answers the caller."""
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    call_id = f"agent-3-{mode}"
    key = settings.keys.call_events(call_id)
    interruption = await asyncio.to_thread(say, CANCEL + ", and then tell me about refunds", RATE)
    async with (
        gateway_process(settings) as url,
        worker_process(settings, "transcribe"),
        worker_process(settings, "agent"),
    ):
        # The caller starts talking 1.5 s into the call, while the greeting (~3 s) plays.
        audio = frame_aligned(bytes(3 * RATE) + interruption + bytes(8 * RATE * 2))
        [result] = await simulate(
            url, [audio], rate_hz=RATE, mode=mode, call_ids=[call_id], linger_s=4
        )
        await wait_for_event(redis, key, "agent.done", 60)
    assert result.error is None
    assert result.stops_received >= 1
    published = await events(redis, key)
    greeting, answer = [e for e in published if e.type == "agent.turn"][:2]
    assert greeting.data["ended"] == "barged_in"
    assert greeting.data["interrupted"] is True
    assert greeting.data["holds"] == 1
    # It played from its start until the barge-in, shorter than its audio ...
    played_ms = greeting.data["duration"] // 10_000
    assert 0 < played_ms < greeting.data["audio_ms"]
    # ... which came after the caller began to speak (1.5 s in).
    assert greeting.data["offset"] // 10_000 + played_ms > 1500
    # The caller was answered, and heard less than the greeting and the answer in full.
    question = next(f for f in finals(published) if "cancel" in f.data["text"])
    assert answer.data["reply_to"] == question.id
    assert answer.data["intent"] == "cancel"
    assert answer.data["ended"] == "played"
    assert result.frames_received * 20 < greeting.data["audio_ms"] + answer.data["audio_ms"]


LONG_GREETING = (
    "Hello, thanks for calling the city energy company. Please note that this call may be "
    "recorded for training and quality purposes. Our offices are open from eight in the "
    "morning until six in the evening, Monday to Friday. How can I help you today?"
)
QUIET_FLOW = f"""
greeting: "{LONG_GREETING}"
nlp_intents: false
intents:
  goodbye: {{examples: ["goodbye"], keywords: ["goodbye"]}}
replies:
  goodbye: {{say: "Goodbye.", action: end}}
fallback:
  say: ["Sorry, I didn't catch that."]
  max: 3
  then: {{say: "Let me transfer you.", action: transfer}}
"""


def sox(*effects: str) -> bytes:
    """A sound made by sox (PCM16 mono at RATE)."""
    out = subprocess.run(
        ["sox", "-n", "-r", str(RATE), "-b", "16", "-c", "1", "-t", "raw", "-", *effects],
        check=True,
        capture_output=True,
    ).stdout
    return frame_aligned(out)


def at(track: bytearray, seconds: float, sound: bytes) -> None:
    start = int(seconds * RATE) * 2
    track[start : start + len(sound)] = sound


@pytest.mark.timeout(180)
async def test_backchannels_coughs_and_noise_do_not_interrupt_the_agent(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """While a long greeting plays, the caller says "mhm", "okay", "right", coughs and makes a
    noise burst: none of them is a barge-in (the false barge-ins are counted: none), the
    greeting plays to its end, and no backchannel is answered."""
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    flow = tmp_path / "flow.yaml"
    flow.write_text(QUIET_FLOW)
    track = bytearray(20 * RATE * 2)
    sounds = {
        "mhm": (2.0, await asyncio.to_thread(say, "Mhm.", RATE)),
        "cough": (3.5, sox("synth", "0.4", "brownnoise", "fade", "q", "0.01", "0.4", "0.3")),
        "okay": (5.0, await asyncio.to_thread(say, "Okay.", RATE)),
        "noise burst": (6.5, sox("synth", "0.3", "whitenoise", "vol", "0.5")),
        "right": (8.0, await asyncio.to_thread(say, "Right.", RATE)),
        "yeah": (9.5, await asyncio.to_thread(say, "Yeah.", RATE)),
    }
    for when, sound in sounds.values():
        at(track, when, sound)
    key = settings.keys.call_events("agent-5")
    async with (
        gateway_process(settings) as url,
        worker_process(settings, "transcribe"),
        # espeak-ng's voice is the same every time (Piper's is not): the test can make the
        # greeting's audio itself, to the frame.
        worker_process(settings, "agent", "--dialog", str(flow), "--tts", "espeak"),
    ):
        [result] = await simulate(
            url, [bytes(track)], rate_hz=RATE, mode="unmixed", call_ids=["agent-5"], linger_s=2
        )
        await wait_for_event(redis, key, "agent.done", 60)
    assert result.error is None
    published = await events(redis, key)
    turns = [e for e in published if e.type == "agent.turn"]
    false_barge_ins = sum(1 for t in turns if t.data["interrupted"])
    assert false_barge_ins == 0, [t.data for t in turns]
    [greeting] = turns  # no backchannel was taken for a question (no "Sorry, I didn't ...")
    assert greeting.data["ended"] == "played"
    assert greeting.data["audio_ms"] > 11_000  # long enough to be talked over six times
    assert greeting.data["holds"] >= 3  # the voiced ones held it a moment; it played on
    # Nothing of it was lost to the holds: the recording holds the whole greeting. The egress
    # takes back the frames whose slot had not ended when it held; the emulator plays each
    # frame up to a frame (plus its delivery) after that slot, so at a hold's edge a frame may
    # be heard twice or, late, be dropped: a frame or two a hold. Taking nothing back, as
    # a plain StopAudio does, would lose the ~5 frames (100 ms) the platform holds at each.
    voice = make_synthesizer("espeak", os.environ)
    said = frame_aligned(b"".join(voice.synthesize(s, RATE) for s in sentences(LONG_GREETING)))
    size = RATE // 50 * 2
    expected = Counter(f for f in chunk(said, size) if not is_silent(f))
    played = Counter(f for f in chunk(result.recording, size) if not is_silent(f))
    assert set(played) <= set(expected)  # all it played is the greeting
    assert sum((expected - played).values()) <= 2 * greeting.data["holds"]
    assert sum((played - expected).values()) <= 2 * greeting.data["holds"]


@pytest.mark.timeout(180)
async def test_with_llm_the_agent_speaks_the_models_streamed_reply(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """``--llm URL``: the caller's final transcript goes to an OpenAI-compatible endpoint (a
    stand-in that streams like the real API) with the conversation so far; what it streams is
    said in the call."""
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    audio = await asyncio.to_thread(caller)
    key = settings.keys.call_events("agent-4")
    reply = "Of course. I have refunded the second charge. Anything else?"
    stream = sse("Of cour", "se. I have ref", "unded the second charge. Any", "thing else?")
    async with (
        StandIn(script=[stream]) as model,
        gateway_process(settings) as url,
        worker_process(settings, "transcribe"),
        worker_process(settings, "agent", "--llm", model.url),
    ):
        [result] = await simulate(url, [audio], rate_hz=RATE, call_ids=["agent-4"], linger_s=8)
        assert result.error is None
        await wait_for_event(redis, key, "agent.done", 60)
    published = await events(redis, key)
    greeting, answer = [e for e in published if e.type == "agent.turn"][:2]
    [question] = finals(published)
    assert answer.data["text"] == reply
    assert answer.data["reply_to"] == question.id
    [request] = model.requests
    messages = request.body["messages"]
    assert request.body["stream"] is True
    assert messages[0]["role"] == "system"
    assert messages[1:] == [
        {"role": "assistant", "content": greeting.data["text"]},
        {"role": "user", "content": question.data["text"]},
    ]
    heard = await asyncio.to_thread(words, result.recording)
    assert len(heard & {"refunded", "second", "charge", "anything", "else"}) >= 3, heard
