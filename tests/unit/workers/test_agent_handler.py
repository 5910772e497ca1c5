"""The agent's handler through the in-memory ports (no Redis, no real voice): turns end at their
playback marks, a caller talking over a turn holds then stops it, a backchannel lets it play on
and is not answered, a hang-up closes what was open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import numpy as np

from callstream.shared.catalogue import AGENT_TURN
from callstream.shared.entries import InEnd, InFrame
from callstream.shared.events import CALL_STARTED, Event
from callstream.workers.agent.dialog import Dialog, parse_flow
from callstream.workers.agent.llm import ChatLlm
from callstream.workers.agent.worker import AgentHandler
from callstream.workers.api import Item
from callstream.workers.testing import MemoryContext, memory_context
from tests.unit.workers.test_agent_bargein import silence, voiced

RATE = 16000
FRAME = RATE // 50 * 2
FLOW = """
greeting: "Hello there. How can I help?"
nlp_intents: false
intents:
  refund: {examples: ["i want a refund"], keywords: ["refund"]}
replies:
  refund: {say: "Refunds take five days."}
fallback:
  say: ["Sorry?"]
  max: 3
  then: {say: "Let me transfer you.", action: transfer}
"""


class Tone:
    """A stand-in voice: one second of tone per sentence, whatever it says."""

    name = "tone"

    def synthesize(self, text: str, rate_hz: int) -> bytes:
        return (
            (np.sin(np.arange(rate_hz) / rate_hz * 2 * np.pi * 220) * 8000).astype("<i2").tobytes()
        )


class Call:
    """One call's handler, its clock (ms from the call's start) and helpers to drive it."""

    def __init__(self, ctx: MemoryContext | None = None, llm: ChatLlm | None = None) -> None:
        self.ctx = ctx or memory_context("c", rate_hz=RATE, mode="unmixed")
        self.handler = AgentHandler(self.ctx, Dialog(parse_flow(FLOW)), Tone(), llm)
        self.now_ms = 0
        self.seq = 0

    def event(self, type: str, data: dict[str, object], at_ms: int | None = None) -> Event:
        at = self.now_ms if at_ms is None else at_ms
        return Event(f"c:{type}:{at}", "c", type, self.ctx.call.time_ms + at, data)

    async def send(self, *items: Event | InEnd) -> None:
        await self.handler.handle([(f"{i}-0", item) for i, item in enumerate(items)])

    async def mark(self, name: str) -> None:
        await self.send(self.event("playback.mark", {"name": name}))

    async def talk(self, samples: np.ndarray) -> None:
        """The caller's audio, frame by frame, on the call's clock."""
        pcm = np.clip(samples, -32768, 32767).astype("<i2").tobytes()
        batch: list[Item] = []
        for k in range(len(pcm) // FRAME):
            frame = pcm[k * FRAME : (k + 1) * FRAME]
            ts = self.ctx.call.time_ms + self.now_ms
            batch.append((f"f{self.seq}", InFrame(self.seq, ts, "4:+1", 0, False, frame)))
            self.seq += 1
            self.now_ms += 20
        await self.handler.handle(batch)

    def log(self) -> list[str]:
        return [
            f"{kind} {arg!s}" if isinstance(arg, str) else kind for kind, arg in self.ctx.audio.log
        ]

    def turns(self) -> list[Event]:
        return self.ctx.events.of_type(AGENT_TURN)


async def greeted() -> Call:
    call = Call()
    await call.send(call.event(CALL_STARTED, {"rate_hz": RATE, "mode": "unmixed"}))
    await call.mark("agent:1:start")
    return call


async def test_a_turn_is_published_when_playback_reaches_its_end_mark() -> None:
    call = await greeted()
    assert call.log() == ["mark agent:1:start", "play", "play", "mark agent:1:end"]
    assert call.turns() == []  # still playing
    call.now_ms = 2100
    await call.mark("agent:1:end")
    [turn] = call.turns()
    assert turn.data["text"] == "Hello there. How can I help?"
    assert turn.data["ended"] == "played"
    assert turn.data["interrupted"] is False
    assert turn.data["audio_ms"] == 2000
    assert turn.data["duration"] == 2100 * 10_000
    assert turn.data["first_audio_at_ms"] is not None
    assert turn.data["heard_at_ms"] is None  # the greeting answers nothing


async def test_a_caller_talking_over_a_turn_holds_then_stops_it() -> None:
    call = await greeted()
    await call.talk(np.concatenate([silence(0.2), voiced(1.0)]))
    assert call.log()[-2:] == ["pause", "stop"]
    [turn] = call.turns()
    assert turn.data["ended"] == "barged_in"
    assert turn.data["interrupted"] is True
    assert turn.data["holds"] == 1
    # It ended when the caller had said 500 ms of voice: 0.2 s + 0.5 s into the call.
    assert 680 <= turn.data["duration"] // 10_000 <= 760


async def test_a_backchannel_holds_the_turn_a_moment_and_is_not_answered() -> None:
    call = await greeted()
    await call.talk(np.concatenate([silence(0.2), voiced(0.3), silence(0.6)]))
    assert call.log()[-2:] == ["pause", "resume"]
    assert call.turns() == []  # it plays on
    # The recogniser made words of it; they began during the turn: not answered.
    said = {"resultStatus": "Final", "text": "i want a refund", "offset": 2_000_000}
    said |= {"duration": 3_000_000, "participantRawID": "4:+1"}
    await call.send(call.event("transcript", said))
    call.now_ms = 2600
    await call.mark("agent:1:end")
    [turn] = call.turns()
    assert turn.data["ended"] == "played"
    assert turn.data["holds"] == 1
    assert "play" not in call.log()[call.log().index("resume") :]  # no reply was made


async def test_a_question_after_the_turn_is_answered() -> None:
    call = await greeted()
    call.now_ms = 2000
    await call.mark("agent:1:end")
    said = {"resultStatus": "Final", "text": "i want a refund", "offset": 25_000_000}
    said |= {"duration": 10_000_000, "participantRawID": "4:+1"}
    question = call.event("transcript", said, at_ms=4000)
    await call.send(question)
    assert call.log()[-3:] == ["mark agent:2:start", "play", "mark agent:2:end"]
    await call.mark("agent:2:start")
    await call.mark("agent:2:end")
    answer = call.turns()[1]
    assert answer.data["intent"] == "refund"
    assert answer.data["reply_to"] == question.id
    assert answer.data["heard_at_ms"] <= answer.data["first_audio_at_ms"]


async def test_noise_over_a_turn_changes_nothing() -> None:
    call = await greeted()
    rng = np.random.default_rng(0)
    await call.talk(np.concatenate([silence(0.2), rng.normal(0, 6000, RATE // 2)]))
    assert "pause" not in call.log()
    assert "stop" not in call.log()


async def test_a_hang_up_ends_the_open_turn() -> None:
    call = await greeted()
    call.now_ms = 800
    await call.send(InEnd("normal"))
    [turn] = call.turns()
    assert turn.data["ended"] == "hung_up"
    assert turn.data["interrupted"] is False


async def test_a_replica_taking_over_a_held_turn_plays_it_on() -> None:
    call = await greeted()
    await call.talk(np.concatenate([silence(0.2), voiced(0.3)]))  # held, the burst not over
    assert call.log()[-1] == "pause"
    state = call.ctx.state
    successor = Call(memory_context("c", rate_hz=RATE, mode="unmixed", state=state))
    assert successor.log() == ["resume"]
    assert successor.ctx.state["held_at"] is None


class HeldLlm:
    """A stand-in model: says its first sentence at once, then thinks until cancelled."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()  # asked for more: the first sentence has been queued
        self.cancelled = asyncio.Event()

    async def reply(self, history: list[tuple[str, str]], utterance: str) -> AsyncIterator[str]:
        yield "Let me look into that for you."
        self.waiting.set()
        try:
            await asyncio.Event().wait()  # generating the rest, for ever
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        yield "Your refund was sent yesterday."


async def test_a_caller_can_barge_in_while_the_llm_is_still_generating() -> None:
    llm = HeldLlm()
    ctx = memory_context("c", rate_hz=RATE, mode="unmixed")
    call = Call(ctx, llm=cast(ChatLlm, llm))
    await call.send(call.event(CALL_STARTED, {"rate_hz": RATE, "mode": "unmixed"}))
    await call.mark("agent:1:start")
    call.now_ms = 2000
    await call.mark("agent:1:end")
    said = {"resultStatus": "Final", "text": "where is my refund", "offset": 25_000_000}
    said |= {"duration": 10_000_000, "participantRawID": "4:+1"}
    await call.send(call.event("transcript", said, at_ms=4000))  # returns: the reply streams on
    async with asyncio.timeout(10):
        await llm.waiting.wait()
    assert call.log()[-2:] == ["mark agent:2:start", "play"]
    await call.mark("agent:2:start")
    call.now_ms = 4200
    await call.talk(np.concatenate([silence(0.1), voiced(1.0)]))  # heard while it generates
    assert call.log()[-2:] == ["pause", "stop"]
    async with asyncio.timeout(10):
        await llm.cancelled.wait()  # the rest is not waited for
    reply = call.turns()[1]
    assert reply.data["ended"] == "barged_in"
    assert reply.data["text"] == "Let me look into that for you."
    assert call.ctx.state["history"][-1] == ["assistant", "Let me look into that for you."]


async def test_a_hold_as_the_turn_ends_is_let_go_so_the_next_reply_plays() -> None:
    call = await greeted()
    await call.talk(np.concatenate([silence(0.2), voiced(0.3)]))  # held, the burst not over
    call.now_ms = 2000
    await call.mark("agent:1:end")  # reached just before the hold took effect
    await call.talk(silence(0.1))
    assert call.log()[-2:] == ["pause", "resume"]
