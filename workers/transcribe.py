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
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np
import soxr

from callstream.shared.entries import InEnd, InEntry, InFrame, StreamEntries, decode_in, parse_id
from callstream.shared.events import Event
from callstream.workers.base import CallContext, CallHandler, HandlerFactory
from callstream.workers.stt.engine import Recognizer, RecognizerFactory, Result
from callstream.workers.stt.transcript import (
    SPEECH_STARTED,
    SPEECH_STOPPED,
    TICKS_PER_MS,
    TRANSCRIPT,
    transcript_event_id,
    transcription_data,
)
from callstream.workers.vad import (
    FRAME_MS,
    PREROLL_FRAMES,
    START_WINDOW,
    STOP_FRAMES,
    Segmenter,
    SpeechAudio,
    SpeechStarted,
    SpeechStopped,
    VadEvent,
)

log = logging.getLogger(__name__)

RATE_HZ = 16000  # what the voice activity detector gets
FRAME_BYTES = RATE_HZ * FRAME_MS // 1000 * 2
TIME_HISTORY = START_WINDOW + PREROLL_FRAMES + STOP_FRAMES + 10  # frames whose time is kept


@dataclass
class _Stream:
    """One audio stream of a call (the mix, or one channel) and its recognizer."""

    channel: int
    participant: str
    base_ms: int  # call offset of this stream's first frame seen here
    segmenter: Segmenter
    recognizer: Recognizer
    resampler: soxr.ResampleStream | None
    # 16 kHz audio for the detector; primed with a frame of silence so every call frame yields
    # exactly one detector frame despite the resampler's delay.
    pending: bytearray = field(default_factory=lambda: bytearray(FRAME_BYTES))
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

    def vad_frame(self, pcm: bytes) -> bytes:
        """The call's 20 ms frame at its own rate in, one 20 ms frame at 16 kHz out."""
        if self.resampler is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        self.pending += self.resampler.resample_chunk(samples).tobytes()
        if len(self.pending) < FRAME_BYTES:  # not yet: the resampler is still filling up
            self.pending[:0] = bytes(FRAME_BYTES - len(self.pending))
        frame = bytes(self.pending[:FRAME_BYTES])
        del self.pending[:FRAME_BYTES]
        return frame


class Transcriber:
    """The synchronous core for one call: frames in, events out (runs in a worker thread)."""

    def __init__(self, call_id: str, rate_hz: int, engine: RecognizerFactory) -> None:
        self._call_id = call_id
        self._rate_hz = rate_hz
        self._engine = engine
        self._streams: dict[int, _Stream] = {}
        self.start_ts_ms: int | None = None  # the call's first frame
        self.earliest_needed: str | None = None  # set after each batch (read from the loop)

    def process(self, frames: Sequence[tuple[str, InFrame]], ended: bool) -> list[Event]:
        """Frames (with their in-stream entry ids) in, events out."""
        events: list[Event] = []
        for entry_id, frame in frames:
            if self.start_ts_ms is None:
                self.start_ts_ms = frame.ts_ms
            stream = self._streams.get(frame.channel)
            if stream is None or stream.participant != frame.participant:
                if stream is not None:
                    # The channel passes to someone else (ACS keeps the four most dominant
                    # speakers): the one who left may be mid-utterance, and no more of their
                    # frames will come on it. Finish what they said.
                    events.extend(self._finish(stream))
                stream = self._streams[frame.channel] = self._new_stream(frame)
            stream.recent.append((entry_id, frame.pcm))
            stream.times.append(frame.ts_ms - self.start_ts_ms)
            vad_frame = stream.vad_frame(frame.pcm)
            for detected in stream.segmenter.push(vad_frame, silent=frame.silent):
                # The engine gets the call's own audio: the same frames, at the call's rate.
                native: VadEvent = detected
                if isinstance(detected, SpeechStarted):
                    back = min(len(stream.recent), len(detected.audio) // FRAME_BYTES)
                    stream.utterance_id = stream.recent[-back][0]
                    native = replace(
                        detected, audio=b"".join(pcm for _, pcm in list(stream.recent)[-back:])
                    )
                elif isinstance(detected, SpeechAudio):
                    native = SpeechAudio(frame.pcm)
                events.extend(self._on_vad(stream, native, frame.ts_ms))
        if ended:
            for stream in self._streams.values():
                events.extend(self._finish(stream))
        needed = [i for s in self._streams.values() if (i := s.earliest_needed) is not None]
        self.earliest_needed = min(needed, key=parse_id) if needed else None
        return events

    def _new_stream(self, frame: InFrame) -> _Stream:
        assert self.start_ts_ms is not None
        return _Stream(
            channel=frame.channel,
            participant=frame.participant,
            base_ms=frame.ts_ms - self.start_ts_ms,
            segmenter=Segmenter(RATE_HZ),
            recognizer=self._engine(self._rate_hz),
            resampler=None
            if self._rate_hz == RATE_HZ
            else soxr.ResampleStream(self._rate_hz, RATE_HZ, 1, dtype="int16"),
        )

    def _finish(self, stream: _Stream) -> list[Event]:
        """End a stream at its last frame: close an open utterance, take the engine's last
        results."""
        now_ms = self._now_ms(stream)
        events: list[Event] = []
        for vad_event in stream.segmenter.flush():
            events.extend(self._on_vad(stream, vad_event, now_ms))
        events.extend(
            self._transcript(stream, result, now_ms) for result in stream.recognizer.close()
        )
        return events

    def _now_ms(self, stream: _Stream) -> int:
        assert self.start_ts_ms is not None
        return self.start_ts_ms + stream.call_ms(stream.segmenter.offset_ms)

    def _on_vad(self, stream: _Stream, event: VadEvent, ts_ms: int) -> list[Event]:
        if isinstance(event, SpeechAudio):
            results = stream.recognizer.feed(event.audio)
            return [self._transcript(stream, result, ts_ms) for result in results]
        if isinstance(event, SpeechStarted):
            stream.utterance_ms = stream.call_ms(event.offset_ms)
            stream.recognizer.start(stream.call_ms(event.audio_offset_ms), stream.utterance_ms)
            events = [self._speech(stream, SPEECH_STARTED, stream.utterance_ms, ts_ms)]
            results = stream.recognizer.feed(event.audio)
            return events + [self._transcript(stream, result, ts_ms) for result in results]
        assert isinstance(event, SpeechStopped)
        events = [self._transcript(stream, result, ts_ms) for result in stream.recognizer.stop()]
        events.append(self._speech(stream, SPEECH_STOPPED, stream.call_ms(event.offset_ms), ts_ms))
        return events

    def _speech(self, stream: _Stream, kind: str, offset_ms: int, ts_ms: int) -> Event:
        return Event(
            f"{self._call_id}:{kind}:{stream.channel}:{stream.utterance_ms}",
            self._call_id,
            kind,
            ts_ms,
            {
                "participantRawID": stream.participant,
                "channel": stream.channel,
                "offset": offset_ms * TICKS_PER_MS,
            },
        )

    def _transcript(self, stream: _Stream, result: Result, ts_ms: int) -> Event:
        return Event(
            transcript_event_id(self._call_id, stream.channel, result),
            self._call_id,
            TRANSCRIPT,
            ts_ms,
            transcription_data(result, stream.participant),
        )


START_TS_FIELD = "transcribe_start_ts_ms"  # in the call's state hash (CallContext.state_key)
REPUBLISH_WINDOW = 2000  # events a new owner looks back over for what was published already


class TranscribeHandler:
    def __init__(self, ctx: CallContext, engine: RecognizerFactory) -> None:
        self._ctx = ctx
        self._keys = ctx.settings.keys
        self._call_id = ctx.call.call_id
        self._core = Transcriber(self._call_id, ctx.call.rate_hz, engine)
        self._started = False
        self._start_saved = False
        # What a previous owner already published: this one re-reads from the checkpoint (or
        # from the start, if that owner died before saving one), and what it hears again is
        # not published again — the same ids, and anything about an utterance the previous
        # owner finalised (its recogniser and detector start afresh, so an onset can move by a
        # frame and a text change: the first final of an utterance stands).
        self._published: set[str] = set()
        self._finalised: dict[str, list[tuple[int, int]]] = {}  # channel → (onset, end) ms

    async def handle(self, batch: Sequence[tuple[str, InEntry]]) -> None:
        if not self._started:
            if self._ctx.resume_from is not None:
                # Taken over mid-call: offsets still count from the call's first frame.
                self._core.start_ts_ms = await self._call_start_ts()
            await self._load_published()
            self._started = True
        frames = [(entry_id, entry) for entry_id, entry in batch if isinstance(entry, InFrame)]
        ended = any(isinstance(entry, InEnd) for _, entry in batch)
        events = await asyncio.to_thread(self._core.process, frames, ended)
        if not self._start_saved and self._core.start_ts_ms is not None:
            # For a new owner: the stream's first frame may be trimmed by then (MAXLEN).
            async with self._ctx.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self._ctx.state_key, START_TS_FIELD, str(self._core.start_ts_ms))
                pipe.expire(self._ctx.state_key, self._ctx.settings.call_ttl_s)
                await pipe.execute()
            self._start_saved = True
        if events:
            await self._publish(events)

    async def aclose(self) -> None:
        pass

    def resume_from(self) -> str | None:
        """The open utterances' first frames (or the VAD's pre-roll window): a new owner
        reads them again, so an utterance is never cut at a takeover."""
        return self._core.earliest_needed

    async def _call_start_ts(self) -> int | None:
        """The call's first frame's timestamp, as the first owner saved it, or (if it died
        before it could) as the stream's first frame says."""
        saved = await self._ctx.redis.hget(self._ctx.state_key, START_TS_FIELD)
        if saved is not None:
            return int(saved)
        raw = cast(
            StreamEntries,
            await self._ctx.redis.xrange(self._keys.call_in(self._call_id), count=10),
        )
        for _, fields in raw:
            entry = decode_in(fields)
            if isinstance(entry, InFrame):
                return entry.ts_ms
        return None

    async def _load_published(self) -> None:
        """The call's last events: more than a new owner can hear again (it re-reads at most
        an utterance, 20 s, and a heartbeat)."""
        raw = cast(
            StreamEntries,
            await self._ctx.redis.xrevrange(
                self._keys.call_events(self._call_id), count=REPUBLISH_WINDOW
            ),
        )
        for _, fields in raw:
            try:
                event = Event.from_fields(fields)
            except (KeyError, ValueError, TypeError):
                continue  # not an event of ours
            self._published.add(event.id)
            where = self._utterance_of(event)
            final = event.type == TRANSCRIPT and event.data.get("resultStatus") == "Final"
            if where is not None and final:
                channel, onset_ms = where
                end_ms = onset_ms + int(event.data["duration"]) // TICKS_PER_MS
                self._finalised.setdefault(channel, []).append((onset_ms, end_ms))

    def _utterance_of(self, event: Event) -> tuple[str, int] | None:
        """(channel, onset ms) from a transcriber event's id: ``{call}:{type}:{channel}:
        {onset}…``."""
        parts = event.id[len(self._call_id) + 1 :].split(":")
        if len(parts) < 3 or not parts[2].isdigit():
            return None
        return parts[1], int(parts[2])

    def _heard_before(self, event: Event) -> bool:
        if event.id in self._published:
            return True
        where = self._utterance_of(event)
        if where is None:
            return False
        channel, onset_ms = where
        return any(start <= onset_ms <= end for start, end in self._finalised.get(channel, ()))

    async def _publish(self, events: Sequence[Event]) -> None:
        settings = self._ctx.settings
        if self._published:
            events = [e for e in events if not self._heard_before(e)]
            if not events:
                return
        async with self._ctx.redis.pipeline(transaction=False) as pipe:
            for event in events:
                fields = event.fields()
                pipe.xadd(
                    self._keys.call_events(self._call_id),
                    fields,
                    maxlen=settings.events_maxlen,
                    approximate=True,
                )
                pipe.xadd(
                    self._keys.insights, fields, maxlen=settings.insights_maxlen, approximate=True
                )
            await pipe.execute()


def transcribe_factory(engine: RecognizerFactory) -> HandlerFactory:
    def factory(ctx: CallContext) -> CallHandler:
        return TranscribeHandler(ctx, engine)

    return factory
