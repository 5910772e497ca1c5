"""The ``agent`` worker kind: a voice agent that answers callers with synthesized speech.

Its input is the call's events, as the transcriber publishes them (no audio of its own):
``call.started`` (it greets the caller), final ``transcript`` events (it answers through the
dialog flow, :mod:`.dialog`), ``dtmf`` (keypad entries fill the slot being asked for) and
``speech.started`` (barge-in: the caller talking over the agent stops its audio), until
``transcribe.done``. Each reply is synthesized sentence by sentence (:mod:`.tts`) and played
through the runtime's audio output; each turn is an ``agent.turn`` event.

The dialog's state lives in ``ctx.state``, saved at every checkpoint, so a replica that takes
the call over continues the conversation where it was; turn numbers key the events, so a turn
replayed after a takeover is not published twice.

Whose speech it answers: on an unmixed call only the caller's (every participant but none is
the agent: ACS does not stream the bot's own audio back); on a mixed call the mix includes the
agent's own voice, so a final transcript that falls within the agent's own playback is taken
for its voice and not answered. Barge-in follows ``speech.started`` on unmixed calls; on mixed
calls the agent cannot yet tell its own voice from the caller's at speech onset, and does not
stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from callstream.shared.catalogue import SPEECH_STARTED, TRANSCRIPT
from callstream.shared.events import CALL_STARTED, DTMF, Event
from callstream.workers.agent.dialog import Dialog, Reply, load_flow
from callstream.workers.agent.llm import ChatLlm, LlmConfig, LlmError
from callstream.workers.agent.tts import Synthesizer, make_synthesizer, sentences
from callstream.workers.api import CallContext, CallHandler, HandlerFactory, Inputs, Item, Kind

log = logging.getLogger(__name__)

NAME = "agent"
TURN = "agent.turn"
INPUTS = Inputs(
    audio=False,
    events=frozenset({CALL_STARTED, TRANSCRIPT, DTMF, SPEECH_STARTED}),
    until=frozenset({"transcribe.done"}),
)
MAX_HISTORY = 40  # utterances and replies kept as the LLM's context
LLM_APOLOGY = "Sorry, I'm having trouble answering right now. Could you say that again?"
TICKS_PER_MS = 10_000  # transcript offsets are in 100-ns ticks from the call's start
BYTES_PER_SAMPLE = 2


class AgentHandler:
    """One call's conversation."""

    def __init__(
        self, ctx: CallContext, dialog: Dialog, voice: Synthesizer, llm: ChatLlm | None = None
    ) -> None:
        self._ctx = ctx
        self._dialog = dialog
        self._voice = voice
        self._llm = llm
        state = ctx.state
        self._dialog_state: dict[str, Any] = state.setdefault("dialog", {})
        state.setdefault("turns", 0)
        state.setdefault("greeted", False)
        # The agent's playback on the call's clock (ms from the call's start): [start, end].
        state.setdefault("playing", [0, 0])

    async def handle(self, batch: Sequence[Item]) -> None:
        for _, value in batch:
            if not isinstance(value, Event):
                continue
            if value.type == CALL_STARTED and not self._ctx.state["greeted"]:
                self._ctx.state["greeted"] = True
                await self._say(self._dialog.greet(self._dialog_state), None)
            elif value.type == SPEECH_STARTED:
                self._barge_in(value)
            elif value.type == TRANSCRIPT and value.data.get("resultStatus") == "Final":
                if self._own_voice(value):
                    continue
                text = value.data.get("text")
                if isinstance(text, str) and text:
                    if self._llm is not None:
                        await self._speak(self._ask(text), Reply(""), value)
                        continue
                    reply = self._dialog.on_utterance(self._dialog_state, text)
                    if reply is not None:
                        await self._say(reply, value)
            elif value.type == DTMF:
                reply = self._dialog.on_dtmf(self._dialog_state, str(value.data.get("tone", "")))
                if reply is not None:
                    await self._say(reply, value)

    async def aclose(self) -> None:
        pass

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
        return max(0, int(time.time() * 1000) - self._ctx.call.time_ms)

    async def _say(self, reply: Reply, heard: Event | None) -> None:
        """Synthesize ``reply`` sentence by sentence into the call, and publish its turn."""
        await self._speak(_listed(sentences(reply.text)), reply, heard)

    async def _speak(self, source: AsyncIterator[str], reply: Reply, heard: Event | None) -> None:
        """Each sentence of ``source`` synthesized and played as it comes (an LLM's first
        sentence is heard while the rest is generated); then the turn's event."""
        rate = self._ctx.call.rate_hz
        began = time.monotonic()
        audio_ms = 0
        first_audio_ms: float | None = None
        said: list[str] = []
        async for sentence in source:
            said.append(sentence)
            pcm = await asyncio.to_thread(self._voice.synthesize, sentence, rate)
            if first_audio_ms is None:
                first_audio_ms = (time.monotonic() - began) * 1000
            self._ctx.audio.play(pcm)
            audio_ms += len(pcm) * 1000 // (BYTES_PER_SAMPLE * rate)
        text = " ".join(said)
        history = self._ctx.state.setdefault("history", [])
        if heard is not None and heard.type == TRANSCRIPT:
            history.append(["user", str(heard.data.get("text", ""))])
        history.append(["assistant", text])
        del history[:-MAX_HISTORY]
        start, end = self._ctx.state["playing"]
        now = self._now_ms()
        start = max(now, end)  # after what is still playing
        self._ctx.state["playing"] = [start, start + audio_ms]
        self._ctx.state["turns"] += 1
        turn = self._ctx.state["turns"]
        self._ctx.events.publish(
            TURN,
            {
                "turn": turn,
                "text": text,
                "intent": reply.intent,
                "action": reply.action,
                "reply_to": heard.id if heard is not None else None,
                "audio_ms": audio_ms,
                "first_audio_ms": round(first_audio_ms or 0.0, 1),
                "synthesis_ms": round((time.monotonic() - began) * 1000, 1),
            },
            key=str(turn),
        )

    def _playing_at(self, ms: int) -> bool:
        start, end = self._ctx.state["playing"]
        return bool(start <= ms < end)

    def _barge_in(self, event: Event) -> None:
        """The caller started talking while the agent plays: stop it (unmixed calls)."""
        if self._ctx.call.mode != "unmixed":
            return
        if self._playing_at(self._now_ms()):
            self._ctx.audio.stop()
            start, _ = self._ctx.state["playing"]
            self._ctx.state["playing"] = [start, self._now_ms()]

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


def agent_factory(dialog: Dialog, voice: Synthesizer, llm: ChatLlm | None = None) -> HandlerFactory:
    def factory(ctx: CallContext) -> CallHandler:
        return AgentHandler(ctx, dialog, voice, llm)

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
    return agent_factory(Dialog(flow), voice, llm)


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


KIND = Kind(
    NAME,
    inputs=INPUTS,
    help="a voice agent: greets the caller, answers through a dialog flow, speaks with piper",
    max_calls=100,
    add_arguments=_add_arguments,
    configure=configure,
)
