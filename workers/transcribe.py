"""The transcribe worker: utterances, speech events and ACS-shaped transcripts for each call.

Mixed calls are one audio stream; unmixed calls one per channel (participant). Each stream is
segmented into utterances by :mod:`workers.vad` (on a 16 kHz copy, honouring the ``silent``
flag) and recognised by its own engine :class:`~workers.stt.engine.Recognizer`, which gets the
call's audio in the call's own format. Published on
the call's events stream and on the insights stream:

* ``speech.started`` / ``speech.stopped`` — ``{participantRawID, channel, offset}``;
* ``transcript`` — ACS TranscriptionData (:mod:`workers.stt.transcript`), ``Intermediate``
  while an utterance is spoken and ``Final`` at its end.

Offsets are 100-ns ticks from the call's first frame. Event ids are stable (stream and offset),
so a consumer can drop the duplicates a failover replays. Recognition is CPU-bound and runs in
a worker thread, one batch at a time per call, so the event loop keeps reading.

When every utterance of the call has been published, the runtime publishes ``transcribe.done``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from callstream.shared.entries import InEnd, InFrame, parse_id
from callstream.workers.api import CallContext, CallHandler, HandlerFactory, Item, Kind
from callstream.workers.stt.engine import Recognizer, RecognizerFactory, Result
from callstream.workers.stt.transcript import (
    SPEECH_STARTED,
    SPEECH_STOPPED,
    TICKS_PER_MS,
    TRANSCRIPT,
    transcript_key,
    transcription_data,
)
from callstream.workers.vad import (
    FRAME_MS,
    PREROLL_FRAMES,
    START_WINDOW,
    STOP_FRAMES,
    VAD_FRAME_BYTES,
    VAD_RATE_HZ,
    Segmenter,
    SpeechAudio,
    SpeechStarted,
    SpeechStopped,
    ToVadRate,
    VadEvent,
)

log = logging.getLogger(__name__)

TIME_HISTORY = START_WINDOW + PREROLL_FRAMES + STOP_FRAMES + 10  # frames whose time is kept
MAX_PARKED = 4  # recognizers kept for participants off a channel (ACS streams four at a time)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event the core wants published: ``type`` and ``key`` make its stable id (see
    :meth:`~callstream.workers.api.EventOut.publish`). ``participant`` and ``onset_ms`` (the
    utterance's start, ms from the call's first frame) say which utterance it is about."""

    type: str
    key: str
    time_ms: int
    data: dict[str, Any]
    participant: str
    onset_ms: int


@dataclass
class _Stream:
    """One audio stream of a call (the mix, or one channel's participant) and its recognizer
    (made when the participant first speaks)."""

    channel: int
    participant: str
    base_ms: int  # call offset of this stream's first frame seen here
    segmenter: Segmenter
    recognizer: Recognizer | None
    vad_frame: ToVadRate  # the call's 20 ms frame at its own rate in, one at 16 kHz out
    utterance_ms: int = 0  # call offset where the open utterance's speech started
    # The call's own frames (and their in-stream entry ids) the detector may still use (its
    # pre-roll window), and the open utterance's first entry: what a new owner reads again.
    recent: deque[tuple[str, bytes]] = field(
        default_factory=lambda: deque(maxlen=START_WINDOW + PREROLL_FRAMES)
    )
    utterance_id: str | None = None
    # Call offset of each recent frame: the detector counts frames, but an unmixed channel's
    # frames stop while its participant is not among the dominant speakers.
    times: deque[int] = field(default_factory=lambda: deque(maxlen=TIME_HISTORY))

    def call_ms(self, stream_ms: int) -> int:
        """A detector offset (ms of frames pushed) as call time."""
        back = (self.segmenter.offset_ms - stream_ms) // FRAME_MS
        if back <= 0 and self.times:
            return self.times[-1] + FRAME_MS
        if 0 < back <= len(self.times):
            return self.times[-back]
        return self.base_ms + stream_ms  # further back than remembered: count frames

    @property
    def earliest_needed(self) -> str | None:
        if self.segmenter.in_speech:
            return self.utterance_id
        return self.recent[0][0] if self.recent else None


class Transcriber:
    """The synchronous core for one call: frames in, events out (runs in a worker thread)."""

    def __init__(self, call_id: str, rate_hz: int, engine: RecognizerFactory) -> None:
        self._call_id = call_id
        self._rate_hz = rate_hz
        self._engine = engine
        self._streams: dict[int, _Stream] = {}
        # Streams of participants whose channel passed to someone else, with their recognizer:
        # a participant who comes back (ACS reorders its four most dominant speakers all the
        # time) gets it back instead of a new one, so a channel changing hands costs no engine.
        self._parked: OrderedDict[str, _Stream] = OrderedDict()
        self.recognizers_made = 0
        self.start_ts_ms: int | None = None  # the call's first frame
        self.earliest_needed: str | None = None  # set after each batch (read from the loop)

    def process(self, frames: Sequence[tuple[str, InFrame]], ended: bool) -> list[Outgoing]:
        """Frames (with their in-stream entry ids) in, events out."""
        events: list[Outgoing] = []
        for entry_id, frame in frames:
            if self.start_ts_ms is None:
                self.start_ts_ms = frame.ts_ms
            stream = self._streams.get(frame.channel)
            if stream is None or stream.participant != frame.participant:
                returning = self._parked.pop(frame.participant, None)
                if stream is not None:
                    # The channel passes to someone else (ACS keeps the four most dominant
                    # speakers): the one who left may be mid-utterance, and no more of their
                    # frames will come on it. Finish what they said; keep their recognizer.
                    events.extend(self._park(stream))
                stream = self._streams[frame.channel] = self._new_stream(frame)
                if returning is not None:  # their recognizer, not a new one
                    stream.recognizer = returning.recognizer
            stream.recent.append((entry_id, frame.pcm))
            stream.times.append(frame.ts_ms - self.start_ts_ms)
            vad_frame = stream.vad_frame(frame.pcm)
            for detected in stream.segmenter.push(vad_frame, silent=frame.silent):
                # The engine gets the call's own audio: the same frames, at the call's rate.
                native: VadEvent = detected
                if isinstance(detected, SpeechStarted):
                    back = min(len(stream.recent), len(detected.audio) // VAD_FRAME_BYTES)
                    stream.utterance_id = stream.recent[-back][0]
                    native = replace(
                        detected, audio=b"".join(pcm for _, pcm in list(stream.recent)[-back:])
                    )
                elif isinstance(detected, SpeechAudio):
                    native = SpeechAudio(frame.pcm)
                events.extend(self._on_vad(stream, native, frame.ts_ms))
        if ended:
            for stream in [*self._streams.values(), *self._parked.values()]:
                events.extend(self._finish(stream))
            self._parked.clear()
        needed = [i for s in self._streams.values() if (i := s.earliest_needed) is not None]
        self.earliest_needed = min(needed, key=parse_id) if needed else None
        return events

    def _park(self, stream: _Stream) -> list[Outgoing]:
        """Finish ``stream``'s open utterance and keep its recognizer for its participant (the
        least recently parked beyond MAX_PARKED are closed)."""
        now_ms = self._now_ms(stream)
        events: list[Outgoing] = []
        for vad_event in stream.segmenter.flush():
            events.extend(self._on_vad(stream, vad_event, now_ms))
        if stream.recognizer is None:
            return events
        self._parked[stream.participant] = stream
        self._parked.move_to_end(stream.participant)
        while len(self._parked) > MAX_PARKED:
            _, oldest = self._parked.popitem(last=False)
            events.extend(self._finish(oldest))
        return events

    def _new_stream(self, frame: InFrame) -> _Stream:
        assert self.start_ts_ms is not None
        return _Stream(
            channel=frame.channel,
            participant=frame.participant,
            base_ms=frame.ts_ms - self.start_ts_ms,
            segmenter=Segmenter(VAD_RATE_HZ),
            recognizer=None,
            vad_frame=ToVadRate(self._rate_hz),
        )

    def _finish(self, stream: _Stream) -> list[Outgoing]:
        """End a stream at its last frame: close an open utterance, take the engine's last
        results."""
        now_ms = self._now_ms(stream)
        events: list[Outgoing] = []
        for vad_event in stream.segmenter.flush():
            events.extend(self._on_vad(stream, vad_event, now_ms))
        if stream.recognizer is not None:
            results = stream.recognizer.close()
            stream.recognizer = None
            events.extend(self._transcript(stream, result, now_ms) for result in results)
        return events

    def _now_ms(self, stream: _Stream) -> int:
        assert self.start_ts_ms is not None
        return self.start_ts_ms + stream.call_ms(stream.segmenter.offset_ms)

    def _on_vad(self, stream: _Stream, event: VadEvent, ts_ms: int) -> list[Outgoing]:
        if isinstance(event, SpeechAudio):
            assert stream.recognizer is not None  # made at the utterance's start
            results = stream.recognizer.feed(event.audio)
            return [self._transcript(stream, result, ts_ms) for result in results]
        if isinstance(event, SpeechStarted):
            stream.utterance_ms = stream.call_ms(event.offset_ms)
            if stream.recognizer is None:  # the participant's first utterance
                stream.recognizer = self._engine(self._rate_hz)
                self.recognizers_made += 1
            stream.recognizer.start(stream.call_ms(event.audio_offset_ms), stream.utterance_ms)
            events = [self._speech(stream, SPEECH_STARTED, stream.utterance_ms, ts_ms)]
            results = stream.recognizer.feed(event.audio)
            return events + [self._transcript(stream, result, ts_ms) for result in results]
        assert isinstance(event, SpeechStopped)
        assert stream.recognizer is not None
        events = [self._transcript(stream, result, ts_ms) for result in stream.recognizer.stop()]
        events.append(self._speech(stream, SPEECH_STOPPED, stream.call_ms(event.offset_ms), ts_ms))
        return events

    def _speech(self, stream: _Stream, kind: str, offset_ms: int, ts_ms: int) -> Outgoing:
        return Outgoing(
            kind,
            f"{stream.channel}:{stream.utterance_ms}",
            ts_ms,
            {
                "participantRawID": stream.participant,
                "channel": stream.channel,
                "offset": offset_ms * TICKS_PER_MS,
            },
            stream.participant,
            stream.utterance_ms,
        )

    def _transcript(self, stream: _Stream, result: Result, ts_ms: int) -> Outgoing:
        return Outgoing(
            TRANSCRIPT,
            transcript_key(stream.channel, result),
            ts_ms,
            transcription_data(result, stream.participant),
            stream.participant,
            result.offset_ms,
        )


START_TS = "start_ts_ms"  # in the call's state: its first frame's timestamp (epoch ms)


class TranscribeHandler:
    def __init__(self, ctx: CallContext, engine: RecognizerFactory) -> None:
        self._ctx = ctx
        self._core = Transcriber(ctx.call_id, ctx.call.rate_hz, engine)
        start_ts = ctx.state.get(START_TS)
        # Taken over mid-call: offsets still count from the call's first frame (which the
        # stream may no longer hold).
        self._core.start_ts_ms = start_ts if isinstance(start_ts, int) else None
        # What a previous owner already published: this one re-reads from the checkpoint (or
        # from the start, if that owner died before saving one). The events port drops what
        # it publishes again under the same id; an utterance the previous owner finalised is
        # not published again at all (recogniser and detector start afresh, so an onset can
        # move by a frame and a text change: the first final of an utterance stands).
        self._finalised: dict[str, list[tuple[int, int]]] = {}  # participant → (onset, end) ms
        for event in ctx.history:
            if event.type == TRANSCRIPT and event.data.get("resultStatus") == "Final":
                onset_ms = int(event.data["offset"]) // TICKS_PER_MS
                end_ms = onset_ms + int(event.data["duration"]) // TICKS_PER_MS
                participant = str(event.data.get("participantRawID", ""))
                self._finalised.setdefault(participant, []).append((onset_ms, end_ms))

    async def handle(self, batch: Sequence[Item]) -> None:
        frames = [(entry_id, entry) for entry_id, entry in batch if isinstance(entry, InFrame)]
        ended = any(isinstance(entry, InEnd) for _, entry in batch)
        outgoing = await asyncio.to_thread(self._core.process, frames, ended)
        if START_TS not in self._ctx.state and self._core.start_ts_ms is not None:
            self._ctx.state[START_TS] = self._core.start_ts_ms
        publish = self._ctx.events.publish
        for out in outgoing:
            if not self._finalised_before(out):
                publish(out.type, out.data, key=out.key, time_ms=out.time_ms)

    async def aclose(self) -> None:
        pass

    def resume_from(self) -> str | None:
        """The open utterances' first frames (or the VAD's pre-roll window): a new owner
        reads them again, so an utterance is never cut at a takeover."""
        return self._core.earliest_needed

    def _finalised_before(self, out: Outgoing) -> bool:
        return any(
            start <= out.onset_ms <= end for start, end in self._finalised.get(out.participant, ())
        )


def transcribe_factory(engine: RecognizerFactory) -> HandlerFactory:
    def factory(ctx: CallContext) -> CallHandler:
        return TranscribeHandler(ctx, engine)

    return factory


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=("pocketsphinx", "azure"),
        default="pocketsphinx",
        help="speech-to-text engine: pocketsphinx (offline, default) or azure "
        "(CS_AZURE_SPEECH_KEY and CS_AZURE_SPEECH_REGION or _ENDPOINT)",
    )


def _configure(options: argparse.Namespace) -> HandlerFactory:
    # Engines are imported here: a replica loads only the SDK it uses.
    if getattr(options, "engine", "pocketsphinx") == "azure":
        from callstream.workers.stt.azure_engine import (  # noqa: PLC0415
            AzureSpeechSettings,
            azure_factory,
            check_service,
        )

        settings = AzureSpeechSettings.from_env(os.environ)
        check_service(settings)  # one clear error now rather than one per call
        log.info("azure speech: %s, %s", settings.endpoint or settings.region, settings.language)
        return transcribe_factory(azure_factory(settings))
    from callstream.workers.stt.pocketsphinx_engine import pocketsphinx_factory  # noqa: PLC0415

    return transcribe_factory(pocketsphinx_factory)


# PocketSphinx holds the GIL: one replica is one core, about two real-time streams
# (docs/performance.md). Scale with replicas, not with --max-calls.
KIND = Kind(
    "transcribe",
    configure=_configure,
    help="speech events and ACS-shaped transcripts (offline PocketSphinx, or Azure Speech)",
    max_calls=2,
    add_arguments=_add_arguments,
)
