"""Voice activity detection: splits one audio stream into utterances. No I/O.

Each 20 ms frame is classified by WebRTC's VAD (``webrtcvad``, the GMM detector from Chrome,
fast and well kept), or taken as non-speech when the platform flagged it ``silent``. An
utterance starts when ``START_FRAMES`` of the last ``START_WINDOW`` frames are speech, and
is said to start at the first speech frame of that window; its audio also includes the frames
before it still in the window plus ``PREROLL_FRAMES`` more (so the first phoneme is not
clipped). It stops after ``STOP_FRAMES`` frames in a row without speech (the hangover, which
stays in the audio); it is said to end with its last speech frame. An utterance that reaches
``MAX_UTTERANCE_FRAMES`` (music on hold, a monologue, a noisy line) is ended there and the next
one starts with the following frame, so results, memory and a new owner's re-reading stay
bounded. Offsets count frames from the start of the stream, 20 ms each.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import soxr
import webrtcvad

FRAME_MS = 20
START_WINDOW = 5
START_FRAMES = 3
PREROLL_FRAMES = 10  # 200 ms before the window that triggered
STOP_FRAMES = 25  # 500 ms without speech ends an utterance
MAX_UTTERANCE_FRAMES = 1000  # 20 s: a longer one is split
AGGRESSIVENESS = 2  # webrtcvad 0 (least) to 3 (most eager to call a frame non-speech)
VAD_RATE_HZ = 16000  # what callers of the detector give it (webrtcvad takes no 24 kHz)
VAD_FRAME_BYTES = VAD_RATE_HZ * FRAME_MS // 1000 * 2


class ToVadRate:
    """A stream's 20 ms frames at its call's rate in, 20 ms frames at 16 kHz out, one for one
    (soxr, streaming). Primed with a frame of silence, so every call frame yields exactly one
    detector frame despite the resampler's delay."""

    def __init__(self, rate_hz: int) -> None:
        self._resampler = (
            None
            if rate_hz == VAD_RATE_HZ
            else soxr.ResampleStream(rate_hz, VAD_RATE_HZ, 1, dtype="int16")
        )
        self._pending = bytearray(VAD_FRAME_BYTES)

    def __call__(self, pcm: bytes) -> bytes:
        if self._resampler is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        self._pending += self._resampler.resample_chunk(samples).tobytes()
        if len(self._pending) < VAD_FRAME_BYTES:  # not yet: the resampler is still filling up
            self._pending[:0] = bytes(VAD_FRAME_BYTES - len(self._pending))
        frame = bytes(self._pending[:VAD_FRAME_BYTES])
        del self._pending[:VAD_FRAME_BYTES]
        return frame


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    offset_ms: int  # the first speech frame of the window that triggered: where speech starts
    audio_offset_ms: int  # where ``audio`` starts
    audio: bytes  # the utterance's first frames (pre-roll and the window that triggered)


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    audio: bytes  # one more frame of the current utterance


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    offset_ms: int  # the end of the last speech frame (the hangover that confirmed it follows)


VadEvent = SpeechStarted | SpeechAudio | SpeechStopped


class Segmenter:
    """Utterances of one stream of 20 ms frames of 16-bit mono PCM at ``rate_hz``."""

    def __init__(self, rate_hz: int, *, aggressiveness: int = AGGRESSIVENESS) -> None:
        if rate_hz not in (8000, 16000, 32000, 48000):
            # webrtcvad's rates; 24 kHz streams are resampled to 16 kHz by the caller.
            raise ValueError(f"VAD needs 8, 16, 32 or 48 kHz audio, got {rate_hz} Hz")
        self._vad = webrtcvad.Vad(aggressiveness)
        self._rate_hz = rate_hz
        self._frame_bytes = rate_hz * FRAME_MS // 1000 * 2
        self._history: deque[tuple[bytes, bool]] = deque(maxlen=START_WINDOW + PREROLL_FRAMES)
        self._frames = 0  # frames seen so far
        self._in_speech = False
        self._quiet = 0  # non-speech frames in a row while in speech
        self._length = 0  # frames in the open utterance since its start was confirmed

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def offset_ms(self) -> int:
        """Where the stream is: the end of the last frame pushed."""
        return self._frames * FRAME_MS

    def push(self, pcm: bytes, *, silent: bool = False) -> list[VadEvent]:
        """One frame in; what it starts, continues or stops out."""
        if len(pcm) != self._frame_bytes:
            raise ValueError(f"expected {self._frame_bytes}-byte frames, got {len(pcm)} bytes")
        speech = not silent and self._vad.is_speech(pcm, self._rate_hz)
        self._frames += 1
        if self._in_speech:
            if self._length >= MAX_UTTERANCE_FRAMES:
                # End it before this frame, and go on with a new one from this frame.
                stopped = SpeechStopped(self._speech_end_ms() - FRAME_MS)
                self._length = 1
                self._quiet = 0 if speech else 1
                start_ms = self.offset_ms - FRAME_MS
                return [stopped, SpeechStarted(start_ms, start_ms, pcm)]
            self._length += 1
            self._quiet = 0 if speech else self._quiet + 1
            if self._quiet >= STOP_FRAMES:
                self._in_speech = False
                self._history.clear()
                return [SpeechAudio(pcm), SpeechStopped(self._speech_end_ms())]
            return [SpeechAudio(pcm)]
        self._history.append((pcm, speech))
        window = list(self._history)[-START_WINDOW:]
        if sum(is_speech for _, is_speech in window) < START_FRAMES:
            return []
        self._in_speech = True
        self._quiet = 0
        self._length = 0
        audio = b"".join(frame for frame, _ in self._history)
        audio_ms = self.offset_ms - len(self._history) * FRAME_MS
        first_speech = next(i for i, (_, is_speech) in enumerate(window) if is_speech)
        onset_ms = self.offset_ms - (len(window) - first_speech) * FRAME_MS
        self._history.clear()
        return [SpeechStarted(onset_ms, audio_ms, audio)]

    def flush(self) -> list[VadEvent]:
        """The stream ended: stop an utterance still open."""
        if not self._in_speech:
            return []
        self._in_speech = False
        return [SpeechStopped(self._speech_end_ms())]

    def _speech_end_ms(self) -> int:
        return self.offset_ms - self._quiet * FRAME_MS
