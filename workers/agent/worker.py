"""The ``agent`` worker kind: a voice agent that answers callers with synthesized speech.

Its input is the call's audio and its events, until ``transcribe.done``: ``call.started`` (it
greets the caller), final ``transcript`` events (it answers through the dialog flow,
:mod:`.dialog`, or an LLM, :mod:`.llm`), ``dtmf`` (keypad entries fill the slot being asked
for) and ``playback.mark`` (where playback of its turns began and ended). Each reply is
synthesized sentence by sentence (:mod:`.tts`) and played through the runtime's audio output
between two marks; each turn is an ``agent.turn`` event, published when it has ended: played,
barged in on, or cut off by the call's end.

Barge-in (:mod:`.bargein`): while a turn plays, the caller's frames are listened to; voice holds
the agent's audio at once (``ctx.audio.pause()``), enough of it stops it (``stop()``), and a
burst that ends short of that (a backchannel, a cough) lets it play on (``resume()``).

The dialog's state lives in ``ctx.state``, saved at every checkpoint, so a replica that takes
the call over continues the conversation where it was; turn numbers key the events, so a turn
replayed after a takeover is not published twice.

Whose speech it answers: on an unmixed call only the caller's (every participant but none is
the agent: ACS does not stream the bot's own audio back); on a mixed call a final transcript
that falls mostly within the agent's own playback is taken for its voice and not answered; and
a final that began while a turn played on to its end (a backchannel) is not answered either.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from callstream.shared.catalogue import AGENT_TURN, PLAYBACK_MARK, TRANSCRIPT
from callstream.shared.errors import ConfigError
from callstream.shared.events import CALL_STARTED, DTMF, Event
from callstream.workers.agent.bargein import BargeIn, BargeInConfig, Decision
from callstream.workers.agent.dialog import Dialog, Reply, load_flow
from callstream.workers.agent.llm import ChatLlm, LlmConfig, LlmError
from callstream.workers.agent.tts import Synthesizer, make_synthesizer, sentences
from callstream.workers.api import (
    CallContext,
    CallHandler,
    HandlerFactory,
    InEnd,
    InFrame,
    Inputs,
    Item,
    Kind,
)

log = logging.getLogger(__name__)

NAME = "agent"
INPUTS = Inputs(
    audio=True,
    events=frozenset({CALL_STARTED, TRANSCRIPT, DTMF, PLAYBACK_MARK}),
    until=frozenset({"transcribe.done"}),
)
MAX_HISTORY = 40  # utterances and replies kept as the LLM's context
MAX_HEARD_OVER = 20  # played turns kept to tell a backchannel's transcript from an utterance
LLM_APOLOGY = "Sorry, I'm having trouble answering right now. Could you say that again?"
TICKS_PER_MS = 10_000  # transcript offsets are in 100-ns ticks from the call's start
BYTES_PER_SAMPLE = 2
MARK_PREFIX = "agent:"
PLAYED, BARGED_IN, HUNG_UP = "played", "barged_in", "hung_up"
DEFAULT_BARGE_IN = BargeInConfig()
SYNTHESIS_THREADS = 4


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _epoch_ms() -> int:
    return int(time.time() * 1000)


class AgentHandler:
    """One call's conversation."""

    def __init__(
        self,
        ctx: CallContext,
        dialog: Dialog,
        voice: Synthesizer,
        llm: ChatLlm | None = None,
        *,
        barge_in: BargeInConfig | None = DEFAULT_BARGE_IN,
        synthesis: Executor | None = None,
    ) -> None:
        self._ctx = ctx
        self._synthesis = synthesis  # the replica's synthesis threads (None: asyncio's pool)
        self._dialog = dialog
        self._voice = voice
        self._llm = llm
        self._barge_in = barge_in  # None: the caller cannot interrupt
        self._detectors: dict[int, BargeIn] = {}  # per caller stream (channel)
        # An LLM's reply, spoken as it streams while the caller's audio is still listened to.
        self._replying: asyncio.Task[None] | None = None
        state = ctx.state
        self._dialog_state: dict[str, Any] = state.setdefault("dialog", {})
        state.setdefault("turns", 0)
        state.setdefault("greeted", False)
        # Turns whose audio is queued or playing, by number: published when they end.
        state.setdefault("open", {})
        # The agent's playback on the call's clock (ms from the call's start): [start, end].
        state.setdefault("playing", [0, 0])
        state.setdefault("heard_over", [])  # [start, end] of turns played to their end
        state.setdefault("held_at", None)  # call ms the audio was held (a possible barge-in)
        if state["held_at"] is not None:
            # Taken over while its audio was held: this replica did not hear the burst's start,
            # so it plays on; a caller still talking holds and stops it again.
            ctx.audio.resume()
            state["held_at"] = None

    async def handle(self, batch: Sequence[Item]) -> None:
        for _, value in batch:
            if isinstance(value, InFrame):
                self._listen(value)
            elif isinstance(value, InEnd):
                await self._cancel_reply()
                self._close_turns(HUNG_UP, self._now_ms())
            elif not isinstance(value, Event):
                continue
            elif value.type == PLAYBACK_MARK:
                self._on_mark(value)
            elif value.type == CALL_STARTED and not self._ctx.state["greeted"]:
                self._ctx.state["greeted"] = True
                await self._say(self._dialog.greet(self._dialog_state), None)
            elif value.type == TRANSCRIPT and value.data.get("resultStatus") == "Final":
                if self._own_voice(value) or self._talked_over(value):
                    continue
                text = value.data.get("text")
                if isinstance(text, str) and text:
                    heard_at_ms = _epoch_ms()
                    if self._llm is not None:
                        self._in_background(self._ask(text), Reply(""), value, heard_at_ms)
                        continue
                    reply = self._dialog.on_utterance(self._dialog_state, text)
                    if reply is not None:
                        await self._say(reply, value, heard_at_ms)
            elif value.type == DTMF:
                heard_at_ms = _epoch_ms()
                reply = self._dialog.on_dtmf(self._dialog_state, str(value.data.get("tone", "")))
                if reply is not None:
                    await self._say(reply, value, heard_at_ms)

    async def aclose(self) -> None:
        await self._cancel_reply()

    async def _ask(self, utterance: str) -> AsyncIterator[str]:
        """The LLM's reply to ``utterance``, sentence by sentence, the conversation so far as
        its context; an apology if it fails midway (what it said so far stands)."""
        assert self._llm is not None
        history = [(role, said) for role, said in self._ctx.state.get("history", [])]
        try:
            async for sentence in self._llm.reply(history, utterance):
                yield sentence
        except LlmError as exc:
            log.warning("call %s: %s", self._ctx.call.call_id, exc)
            yield LLM_APOLOGY

    # ---------------------------------------------------------------- speaking

    def _now_ms(self) -> int:
        """The call's clock: ms since its start."""
        return max(0, _epoch_ms() - self._ctx.call.time_ms)

    async def _say(self, reply: Reply, heard: Event | None, heard_at_ms: int | None = None) -> None:
        """Synthesize ``reply`` sentence by sentence into the call (after an LLM's reply still
        being spoken, if there is one)."""
        source = _listed(sentences(reply.text))
        if self._replying is not None and not self._replying.done():
            self._in_background(source, reply, heard, heard_at_ms)
        else:
            await self._speak(source, reply, heard, heard_at_ms)

    def _in_background(
        self,
        source: AsyncIterator[str],
        reply: Reply,
        heard: Event | None,
        heard_at_ms: int | None,
    ) -> None:
        """Speak ``source`` in a task of its own, after the reply before it: the handler goes
        on reading the caller's audio (a barge-in cancels the task) while an LLM generates."""
        previous = self._replying

        async def speak() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await self._speak(source, reply, heard, heard_at_ms)
            except Exception:  # the call's other work goes on; the caller can ask again
                log.exception("call %s: a reply failed", self._ctx.call.call_id)

        self._replying = asyncio.create_task(speak(), name=f"reply-{self._ctx.call.call_id}")

    async def _cancel_reply(self) -> None:
        task, self._replying = self._replying, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def _speak(
        self,
        source: AsyncIterator[str],
        reply: Reply,
        heard: Event | None,
        heard_at_ms: int | None = None,
    ) -> None:
        """Each sentence of ``source`` synthesized and played as it comes (an LLM's first
        sentence is heard while the rest is generated), between two playback marks: the turn's
        event is published when the second is reached (or the caller barges in)."""
        state = self._ctx.state
        rate = self._ctx.call.rate_hz
        began = time.monotonic()
        state["turns"] += 1
        turn = state["turns"]
        record: dict[str, Any] = {
            "turn": turn,
            "text": "",
            "intent": reply.intent,
            "action": reply.action,
            "reply_to": heard.id if heard is not None else None,
            "audio_ms": 0,
            "heard_at_ms": heard_at_ms,
            "first_audio_at_ms": None,
            "first_audio_ms": None,
            "synthesis_ms": None,
            "holds": 0,
            "start_ms": None,
        }
        state["open"][str(turn)] = record
        said: list[str] = []
        try:
            async for sentence in source:
                pcm = await asyncio.get_running_loop().run_in_executor(
                    self._synthesis, self._voice.synthesize, sentence, rate
                )
                if str(turn) not in state["open"]:
                    break  # the caller barged in while this was being made: say no more
                said.append(sentence)
                if record["first_audio_at_ms"] is None:
                    record["first_audio_ms"] = round((time.monotonic() - began) * 1000, 1)
                    record["first_audio_at_ms"] = _epoch_ms()
                    self._ctx.audio.mark(f"{MARK_PREFIX}{turn}:start")
                    begins = max(self._now_ms(), state["playing"][1])  # after what still plays
                    state["playing"] = [begins, begins]
                self._ctx.audio.play(pcm)
                record["text"] = " ".join(said)
                record["audio_ms"] += len(pcm) * 1000 // (BYTES_PER_SAMPLE * rate)
                state["playing"][1] = state["playing"][0] + record["audio_ms"]
        finally:  # also when cancelled by a barge-in: what was said is the conversation's
            record["synthesis_ms"] = round((time.monotonic() - began) * 1000, 1)
            history = state.setdefault("history", [])
            if heard is not None and heard.type == TRANSCRIPT:
                history.append(["user", str(heard.data.get("text", ""))])
            history.append(["assistant", " ".join(said)])
            del history[:-MAX_HISTORY]
        audio_ms = record["audio_ms"]
        if str(turn) in state["open"]:
            if audio_ms:
                self._ctx.audio.mark(f"{MARK_PREFIX}{turn}:end")
            else:  # nothing to say (an LLM that said nothing): a turn of no audio
                self._publish(state["open"].pop(str(turn)), PLAYED, self._now_ms())

    def _on_mark(self, event: Event) -> None:
        """Playback reached a turn's start or its end."""
        name = str(event.data.get("name", ""))
        if not name.startswith(MARK_PREFIX):
            return
        number, _, where = name[len(MARK_PREFIX) :].partition(":")
        record = self._ctx.state["open"].get(number)
        if record is None:
            return
        at_ms = max(0, event.time_ms - self._ctx.call.time_ms)
        if where == "start":
            record["start_ms"] = at_ms
            self._ctx.state["playing"] = [at_ms, at_ms + int(record["audio_ms"] or 0)]
        elif where == "end":
            self._ctx.state["playing"][1] = at_ms
            start = record["start_ms"] if record["start_ms"] is not None else at_ms
            heard_over = self._ctx.state["heard_over"]
            heard_over.append([start, at_ms])
            del heard_over[:-MAX_HEARD_OVER]
            self._publish(self._ctx.state["open"].pop(number), PLAYED, at_ms)

    def _close_turns(self, how: str, at_ms: int) -> None:
        """Every open turn ends now: the caller barged in, or hung up."""
        opened = self._ctx.state["open"]
        for number in sorted(opened, key=int):
            self._publish(opened.pop(number), how, at_ms)

    def _publish(self, record: dict[str, Any], how: str, end_ms: int) -> None:
        start_ms = record.pop("start_ms")
        if start_ms is None:  # never began to play
            start_ms = end_ms
        data = {
            **record,
            "ended": how,
            "interrupted": how == BARGED_IN,
            "offset": start_ms * TICKS_PER_MS,
            "duration": max(0, end_ms - start_ms) * TICKS_PER_MS,
        }
        self._ctx.events.publish(AGENT_TURN, data, key=str(record["turn"]))

    # ---------------------------------------------------------------- listening

    def _listen(self, frame: InFrame) -> None:
        """A caller frame: while the agent's audio plays, is the caller barging in?"""
        config = self._barge_in
        if config is None:
            return
        state = self._ctx.state
        if not any(r["first_audio_at_ms"] is not None for r in state["open"].values()):
            if self._detectors:
                self._detectors.clear()
            if state["held_at"] is not None:  # held as its last turn reached its end: let go
                self._ctx.audio.resume()
                state["held_at"] = None
            return
        detector = self._detectors.get(frame.channel)
        if detector is None:
            detector = self._detectors[frame.channel] = BargeIn(self._ctx.call.rate_hz, config)
        decision = detector.push(frame.pcm, silent=frame.silent)
        if decision is None:
            return
        now_ms = max(0, frame.ts_ms - self._ctx.call.time_ms)
        if decision is Decision.HOLD:
            if state["held_at"] is None:
                self._ctx.audio.pause()
                state["held_at"] = now_ms
                for record in state["open"].values():
                    record["holds"] += 1
        elif decision is Decision.RESUME:
            if state["held_at"] is not None and not any(d.held for d in self._detectors.values()):
                self._ctx.audio.resume()
                held_ms = max(0, now_ms - state["held_at"])
                state["playing"][1] += held_ms  # the rest plays that much later
                state["held_at"] = None
        else:  # Decision.STOP
            if self._replying is not None:
                self._replying.cancel()  # an LLM still generating: say no more
            self._ctx.audio.stop()
            state["held_at"] = None
            state["playing"][1] = now_ms
            self._close_turns(BARGED_IN, now_ms)
            self._detectors.clear()
            log.info("call %s: the caller barged in", self._ctx.call.call_id)

    def _talked_over(self, event: Event) -> bool:
        """A final that began while a turn played on to its end (or still plays): a
        backchannel, a cough the recogniser made words of; the caller did not barge in."""
        offset = event.data.get("offset")
        if not isinstance(offset, int):
            return False
        onset = offset // TICKS_PER_MS
        state = self._ctx.state
        if any(start <= onset < end for start, end in state["heard_over"]):
            return True
        return any(
            r["start_ms"] is not None and r["start_ms"] <= onset for r in state["open"].values()
        )

    def _own_voice(self, event: Event) -> bool:
        """On a mixed call, a final whose speech lies mostly within the agent's playback."""
        if self._ctx.call.mode != "mixed":
            return False
        offset = event.data.get("offset")
        duration = event.data.get("duration")
        if not isinstance(offset, int) or not isinstance(duration, int) or duration <= 0:
            return False
        begin, length = offset // TICKS_PER_MS, duration // TICKS_PER_MS
        start, end = self._ctx.state["playing"]
        overlap: int = max(0, min(end, begin + length) - max(start, begin))
        return overlap * 2 > length


def agent_factory(
    dialog: Dialog,
    voice: Synthesizer,
    llm: ChatLlm | None = None,
    *,
    barge_in: BargeInConfig | None = DEFAULT_BARGE_IN,
    synthesis: Executor | None = None,
) -> HandlerFactory:
    def factory(ctx: CallContext) -> CallHandler:
        return AgentHandler(ctx, dialog, voice, llm, barge_in=barge_in, synthesis=synthesis)

    return factory


async def _listed(items: Sequence[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


def configure(options: argparse.Namespace) -> HandlerFactory:
    """One replica's dialog flow (``--dialog FILE``) and voice (``--tts``)."""
    path: Path | None = options.dialog
    flow = load_flow(str(path) if path is not None else None)  # ConfigError with the reason
    voice = make_synthesizer(options.tts, os.environ)
    if options.tts != "azure":  # load the voice now, not in the first call's greeting (offline)
        voice.synthesize("Hello.", 16000)
    llm = ChatLlm(LlmConfig.from_env(options.llm, os.environ)) if options.llm else None
    barge_in = None
    if not options.no_barge_in:
        try:
            barge_in = BargeInConfig(
                hold_ms=options.barge_in_hold_ms,
                min_speech_ms=options.barge_in_min_ms,
                gap_ms=options.barge_in_gap_ms,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    # Syntheses at once, for all the replica's calls: each already spreads over the cores
    # (onnxruntime), and memory grows with each one running (docs/performance.md).
    synthesis = ThreadPoolExecutor(options.synthesis_threads, thread_name_prefix="synthesis")
    return agent_factory(Dialog(flow), voice, llm, barge_in=barge_in, synthesis=synthesis)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dialog",
        type=Path,
        default=None,
        metavar="FLOWS.yaml",
        help="the dialog flow (docs/agent.md); default: a contact-centre sample",
    )
    parser.add_argument(
        "--llm",
        default=None,
        metavar="URL",
        help="answer with an OpenAI-compatible chat completions endpoint (Azure OpenAI too; "
        "CS_LLM_API_KEY, ...: docs/agent.md) instead of the dialog flow's replies",
    )
    parser.add_argument(
        "--tts",
        choices=("piper", "espeak", "azure"),
        default="piper",
        help="the voice: piper (offline, default), espeak (espeak-ng), azure (Azure Speech)",
    )
    parser.add_argument(
        "--synthesis-threads",
        type=_positive,
        default=SYNTHESIS_THREADS,
        metavar="N",
        help="syntheses at once, for all the replica's calls; more wait their turn "
        f"(default {SYNTHESIS_THREADS})",
    )
    defaults = DEFAULT_BARGE_IN
    parser.add_argument(
        "--barge-in-min-ms",
        type=int,
        default=defaults.min_speech_ms,
        metavar="MS",
        help="voice the caller must speak over the agent to stop it; shorter (a backchannel, "
        f"a cough) only holds it a moment (default {defaults.min_speech_ms})",
    )
    parser.add_argument(
        "--barge-in-hold-ms",
        type=int,
        default=defaults.hold_ms,
        metavar="MS",
        help=f"voice that holds the agent's audio at once (default {defaults.hold_ms})",
    )
    parser.add_argument(
        "--barge-in-gap-ms",
        type=int,
        default=defaults.gap_ms,
        metavar="MS",
        help="silence that ends a burst short of a barge-in: the agent plays on "
        f"(default {defaults.gap_ms})",
    )
    parser.add_argument(
        "--no-barge-in",
        action="store_true",
        help="the caller cannot interrupt the agent",
    )


KIND = Kind(
    NAME,
    inputs=INPUTS,
    help="a voice agent: greets the caller, answers through a dialog flow, speaks with piper",
    max_calls=20,  # measured: 10 calls 0.4 core, 20 calls 0.6 (docs/performance.md)
    add_arguments=_add_arguments,
    configure=configure,
)
