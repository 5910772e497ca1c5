"""ACS TranscriptionData: the shape of transcript events. No I/O.

ACS's real-time transcription sends ``{"kind": "TranscriptionData", "transcriptionData": {...}}``
with text, format, confidence, offset and duration in 100-ns ticks, words with their own
offsets and durations, the participant and a result status. Our events carry that object as
their ``data``, inside the project's envelope (:mod:`shared.events`).
"""

from __future__ import annotations

from typing import Any

# The event types, named where every event type is: the catalogue.
from callstream.shared.catalogue import SPEECH_STARTED, SPEECH_STOPPED, TRANSCRIPT
from callstream.workers.stt.engine import Result

__all__ = [
    "SPEECH_STARTED",
    "SPEECH_STOPPED",
    "TICKS_PER_MS",
    "TRANSCRIPT",
    "transcript_key",
    "transcription_data",
]

TICKS_PER_MS = 10_000  # 100-ns ticks


def transcription_data(result: Result, participant: str) -> dict[str, Any]:
    return {
        "text": result.text,
        "format": "display",
        "confidence": round(result.confidence, 4),
        "offset": result.offset_ms * TICKS_PER_MS,
        "duration": result.duration_ms * TICKS_PER_MS,
        "words": [
            {
                "text": word.text,
                "offset": word.offset_ms * TICKS_PER_MS,
                "duration": word.duration_ms * TICKS_PER_MS,
            }
            for word in result.words
        ],
        "participantRawID": participant,
        "resultStatus": "Final" if result.final else "Intermediate",
    }


def transcript_key(channel: int, result: Result) -> str:
    """What a transcript event is about, stable across replays: the utterance, named by its
    stream and start offset (and, for an intermediate result, how much of it was heard)."""
    base = f"{channel}:{result.offset_ms}"
    return base if result.final else f"{base}:partial:{result.duration_ms}"
