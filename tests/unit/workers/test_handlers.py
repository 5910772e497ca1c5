"""Handlers driven through the in-memory ports of callstream.workers.testing: no Redis."""

from __future__ import annotations

from typing import cast

from callstream.shared.entries import InDtmf, InEnd, InFrame
from callstream.shared.settings import Settings
from callstream.workers.api import Item
from callstream.workers.echo import EchoHandler
from callstream.workers.ports import RedisAudioOut
from callstream.workers.stt.transcript import SPEECH_STARTED, TICKS_PER_MS, TRANSCRIPT
from callstream.workers.testing import memory_context
from callstream.workers.transcribe import START_TS, TranscribeHandler
from callstream.workers.writer import Writer, pack
from tests.unit.workers.test_transcriber import Echoing
from tests.unit.workers.test_vad import quiet, voiced

T0 = 1_700_000_000_000


def frames(pcm_frames: list[bytes], first_seq: int = 0, start_ms: int = 0) -> list[Item]:
    return [
        (
            f"{first_seq + i + 1}-0",
            InFrame(first_seq + i, T0 + start_ms + 20 * i, "", 0, False, pcm),
        )
        for i, pcm in enumerate(pcm_frames)
    ]


async def test_echo_plays_back_the_speech_frames_in_order() -> None:
    ctx = memory_context()
    handler = EchoHandler(ctx)
    speech = [bytes([i]) * 640 for i in range(1, 4)]
    batch: list[Item] = [
        ("1-0", InFrame(0, T0, "", 0, False, speech[0])),
        ("2-0", InFrame(1, T0, "", 0, True, bytes(640))),  # flagged silent: not played
        ("3-0", InDtmf(2, T0, "", "5")),
        ("4-0", InFrame(3, T0, "", 0, False, speech[1])),
    ]
    await handler.handle(batch)
    await handler.handle([("5-0", InFrame(4, T0, "", 0, False, speech[2])), ("6-0", InEnd("x"))])
    await handler.aclose()
    assert ctx.audio.played == speech
    assert ctx.events.events == []


async def test_the_transcriber_publishes_its_events_and_keeps_the_call_start_in_state() -> None:
    ctx = memory_context("c1")
    handler = TranscribeHandler(ctx, Echoing)
    await handler.handle(frames(quiet(50) + voiced(50) + quiet(40)))
    await handler.handle([("999-0", InEnd("normal"))])
    assert ctx.state == {START_TS: T0}
    [final] = ctx.events.of_type(TRANSCRIPT)
    assert final.id == "c1:transcript:0:1000"  # named by its channel and onset
    assert abs(final.data["offset"] // TICKS_PER_MS - 1000) <= 40
    assert ctx.events.events[0].type == SPEECH_STARTED


async def test_a_new_owner_counts_from_the_saved_start_and_does_not_repeat_a_final() -> None:
    """Taken over after the first utterance: the state says where the call began (its first
    frames are gone from the stream) and the history holds the first utterance's final, which
    a re-read must not publish again, even if its onset comes out a frame later."""
    first = memory_context("c1")
    handler = TranscribeHandler(first, Echoing)
    audio = quiet(50) + voiced(50) + quiet(100) + voiced(50) + quiet(40)  # speech at 1 s and 4 s
    await handler.handle(frames(audio[:200]))
    history = list(first.events.events)
    [old_final] = [e for e in history if e.type == TRANSCRIPT]

    second = memory_context("c1", state=dict(first.state), history=history)
    resumed = TranscribeHandler(second, Echoing)
    # The re-read starts a frame into the first utterance's pre-roll: its onset may move.
    await resumed.handle(frames(audio[41:], first_seq=41, start_ms=41 * 20))
    await resumed.handle([("999-0", InEnd("normal"))])
    [final] = second.events.of_type(TRANSCRIPT)  # the second utterance's only
    assert abs(final.data["offset"] // TICKS_PER_MS - 4000) <= 40  # counted from the call's start
    assert final.id != old_final.id
    assert all(e.data.get("offset") != old_final.data["offset"] for e in second.events.events)


class Recorded:
    """Stands in for the runtime's writer: records the packed commands."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []

    def add_packed(self, call_id: str, command: bytes, *, audio: bool = False) -> None:
        self.commands.append(command)


def test_played_audio_is_packed_as_hiredis_packs_the_xadd() -> None:
    settings = Settings(prefix="p")
    writer = Recorded()
    port = RedisAudioOut(cast(Writer, writer), "c1", settings)
    port.play(b"\x01\x02" * 320)
    expected = pack(
        "XADD", "p:call:c1:out", "MAXLEN", "~", settings.out_stream_maxlen, "*",
        "kind", "audio", "pcm", b"\x01\x02" * 320,
    )  # fmt: skip
    assert writer.commands == [expected]
