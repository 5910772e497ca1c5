"""The streaming interface every speech-to-text engine implements.

The transcribe worker segments each audio stream into utterances (:mod:`workers.vad`) and
drives one :class:`Recognizer` per stream: :meth:`~Recognizer.start` at an utterance's start,
:meth:`~Recognizer.feed` with its audio (intermediate results back whenever the hypothesis
changed), :meth:`~Recognizer.stop` at its end (the final result, with word timings), and
:meth:`~Recognizer.close` when the stream ends. Offsets are milliseconds from the start of the
stream. Calls are synchronous (a cloud engine answers through its own threads and hands over
what arrived at the next call); the worker runs them off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from callstream.shared.errors import CallstreamError


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    offset_ms: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Result:
    text: str
    final: bool
    offset_ms: int
    duration_ms: int
    confidence: float  # 0..1
    words: tuple[Word, ...] = field(default=())


class Recognizer(Protocol):
    def start(self, audio_offset_ms: int, speech_offset_ms: int) -> None:
        """An utterance begins: the audio fed next starts ``audio_offset_ms`` into the stream
        (pre-roll included); the voice activity detector heard speech from
        ``speech_offset_ms``."""

    def feed(self, pcm: bytes) -> list[Result]:
        """More of the utterance; what the engine recognised since (intermediate results, and
        finals of an engine that segments on its own and answers late)."""

    def stop(self) -> list[Result]:
        """The utterance ended: its final result when the engine has it now."""

    def close(self) -> list[Result]:
        """The stream ended: everything still owed (bounded wait), then release the engine."""


class RecognizerFailed(CallstreamError):
    """The engine cannot go on with this stream (a cloud session ended with an error). Raised
    from any call after it happened: the call fails, and the worker runtime retries it from its
    checkpoint with a new recognizer (``CS_WORKER_MAX_ATTEMPTS``)."""


RecognizerFactory = Callable[[int], Recognizer]
"""Builds a recognizer for a stream of 16-bit mono PCM at the given rate."""
