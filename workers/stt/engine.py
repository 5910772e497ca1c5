"""The streaming interface every speech-to-text engine implements.

The transcribe worker segments each audio stream into utterances (:mod:`workers.vad`) and
drives one :class:`Recognizer` per stream: :meth:`~Recognizer.start` at an utterance's start,
:meth:`~Recognizer.feed` with its audio (an intermediate result back whenever the hypothesis
changed), :meth:`~Recognizer.stop` at its end (the final result, with word timings). Offsets are
milliseconds from the start of the stream. Engines are synchronous and CPU-bound: the worker
runs them off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


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
    def start(self, offset_ms: int) -> None:
        """An utterance begins ``offset_ms`` into the stream."""

    def feed(self, pcm: bytes) -> Result | None:
        """More of the utterance; an intermediate result when the hypothesis changed."""

    def stop(self) -> Result | None:
        """The utterance ended: its final result (None when nothing was recognised)."""


RecognizerFactory = Callable[[int], Recognizer]
"""Builds a recognizer for a stream of 16-bit mono PCM at the given rate."""
