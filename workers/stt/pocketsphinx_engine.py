"""The offline default engine: CMU PocketSphinx with the US English model its wheel ships.

One :class:`pocketsphinx.Decoder` per stream, one utterance at a time (``start_utt`` …
``end_utt``). Intermediate results come from ``hyp()`` at most every ``PARTIAL_EVERY_MS`` of
audio; the final one carries word timings from ``seg()`` (10 ms frames) without fillers and
silences, and the posterior probability of the hypothesis as confidence.
"""

from __future__ import annotations

import re

import numpy as np
import soxr
from pocketsphinx import Decoder

from callstream.workers.stt.engine import Result, Word

RATE_HZ = 16000  # the model's rate; other streams are resampled
FRAME_MS = 10  # PocketSphinx's frame
PARTIAL_EVERY_MS = 200
_ALTERNATE = re.compile(r"\(\d+\)$")  # "the(2)": the second pronunciation of "the"


def _word(token: str) -> str | None:
    if token.startswith(("<", "[", "+")):  # <s>, </s>, <sil>, [NOISE], +um+
        return None
    return _ALTERNATE.sub("", token)


class PocketSphinxRecognizer:
    def __init__(self, rate_hz: int, decoder: Decoder | None = None) -> None:
        self._rate_hz = rate_hz
        self._decoder = decoder or Decoder(samprate=RATE_HZ, loglevel="FATAL")
        self._offset_ms = 0
        self._speech_ms = 0
        self._fed_ms = 0
        self._next_partial_ms = PARTIAL_EVERY_MS
        self._last_partial = ""
        self._active = False
        self._resampler: soxr.ResampleStream | None = None

    def start(self, audio_offset_ms: int, speech_offset_ms: int) -> None:
        if self._active:
            self._decoder.end_utt()
        self._decoder.start_utt()
        self._active = True
        self._offset_ms = audio_offset_ms
        self._speech_ms = speech_offset_ms
        self._fed_ms = 0
        self._next_partial_ms = PARTIAL_EVERY_MS
        self._last_partial = ""
        if self._rate_hz != RATE_HZ:  # one resampler per utterance: they are not contiguous
            self._resampler = soxr.ResampleStream(self._rate_hz, RATE_HZ, 1, dtype="int16")

    def feed(self, pcm: bytes) -> list[Result]:
        if not self._active:
            raise RuntimeError("feed() outside an utterance: call start() first")
        audio = self._resampled(pcm)
        if audio:  # (a resampler may hold back its first few samples)
            self._decoder.process_raw(audio, False, False)
        self._fed_ms += len(pcm) * 1000 // (2 * self._rate_hz)
        if self._fed_ms < self._next_partial_ms:
            return []
        self._next_partial_ms = self._fed_ms + PARTIAL_EVERY_MS
        hyp = self._decoder.hyp()
        text = " ".join(filter(None, map(_word, hyp.hypstr.split()))) if hyp else ""
        if not text or text == self._last_partial:
            return []
        self._last_partial = text
        end_ms = self._offset_ms + self._fed_ms
        return [Result(text, False, self._speech_ms, end_ms - self._speech_ms, 0.0)]

    def stop(self) -> list[Result]:
        if not self._active:
            return []
        self._decoder.end_utt()
        self._active = False
        hyp = self._decoder.hyp()
        words = tuple(
            Word(
                text,
                self._offset_ms + seg.start_frame * FRAME_MS,
                (seg.end_frame - seg.start_frame + 1) * FRAME_MS,
            )
            for seg in self._decoder.seg()
            if (text := _word(seg.word)) is not None
        )
        if hyp is None or not words:
            return []
        confidence = float(self._decoder.get_logmath().exp(hyp.prob))
        # The phrase starts where the detector heard speech start (PocketSphinx's first word
        # boundary can be off by a syllable) and ends with its last word.
        last = words[-1]
        return [
            Result(
                " ".join(word.text for word in words),
                True,
                self._speech_ms,
                max(0, last.offset_ms + last.duration_ms - self._speech_ms),
                max(0.0, min(1.0, confidence)),
                words,
            )
        ]

    def close(self) -> list[Result]:
        return self.stop()

    def _resampled(self, pcm: bytes) -> bytes:
        if self._resampler is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        return bytes(self._resampler.resample_chunk(samples).tobytes())


def pocketsphinx_factory(rate_hz: int) -> PocketSphinxRecognizer:
    return PocketSphinxRecognizer(rate_hz)
