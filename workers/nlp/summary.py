"""What a call's `nlp.summary` says, gathered utterance by utterance (pure: no I/O, no clock).

:class:`CallSummary` is the NLP handler's per-call state: it is saved with the handler's read
position at every checkpoint (``ctx.state``, JSON) and restored by a replica that takes the call
over, so a summary made after a failover counts every utterance once (:meth:`CallSummary.add`
ignores an utterance it already holds). Times are in ticks of 100 ns, as transcripts give them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TICKS_PER_S = 10_000_000
MAX_UTTERANCES = 5000  # per call: past it the oldest are folded into the totals
TREND_DELTA = 0.1  # second half's mean sentiment minus the first's, beyond which it moved
MAX_PHRASES = 10


@dataclass(frozen=True, slots=True)
class Utterance:
    """One final transcript, as the summary needs it."""

    key: str  # the Final transcript's event id
    participant: str  # participantRawID; "" on a mixed call
    offset: int  # ticks from the call's start
    duration: int  # ticks
    sentiment: float

    @property
    def end(self) -> int:
        return self.offset + self.duration

    def as_json(self) -> list[Any]:
        return [self.key, self.participant, self.offset, self.duration, self.sentiment]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Utterance:
        key, participant, offset, duration, sentiment = raw
        return cls(str(key), str(participant), int(offset), int(duration), float(sentiment))


class CallSummary:
    """A call's utterances, phrases, intents and tones, and the summary they make."""

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        state = state or {}
        self.started_ms: int | None = state.get("started_ms")
        self.ended_ms: int | None = state.get("ended_ms")
        self.utterances = [Utterance.from_json(raw) for raw in state.get("utterances", [])]
        self.phrases: dict[str, int] = dict(state.get("phrases", {}))
        # intent name -> [best score, times, first utterance key]
        self.intents: dict[str, list[Any]] = {
            name: list(value) for name, value in state.get("intents", {}).items()
        }
        self.tones: str = state.get("tones", "")
        self.tone_ids: list[str] = list(state.get("tone_ids", []))
        self._keys = {u.key for u in self.utterances}

    def state(self) -> dict[str, Any]:
        """JSON-able, a copy: what :meth:`__init__` takes back."""
        return {
            "started_ms": self.started_ms,
            "ended_ms": self.ended_ms,
            "utterances": [u.as_json() for u in self.utterances],
            "phrases": dict(self.phrases),
            "intents": {name: list(value) for name, value in self.intents.items()},
            "tones": self.tones,
            "tone_ids": list(self.tone_ids),
        }

    def add(
        self,
        utterance: Utterance,
        phrases: Iterable[str] = (),
        intents: Iterable[tuple[str, float]] = (),
    ) -> bool:
        """Count one final utterance (False: it was counted before, e.g. before a takeover)."""
        if utterance.key in self._keys:
            return False
        self._keys.add(utterance.key)
        self.utterances.append(utterance)
        if len(self.utterances) > MAX_UTTERANCES:
            dropped = self.utterances.pop(0)
            self._keys.discard(dropped.key)
        for phrase in phrases:
            self.phrases[phrase] = self.phrases.get(phrase, 0) + 1
        if len(self.phrases) > 50 * MAX_PHRASES:  # bounded: keep the most frequent
            kept = sorted(self.phrases.items(), key=lambda item: -item[1])[: 10 * MAX_PHRASES]
            self.phrases = dict(kept)
        for name, score in intents:
            seen = self.intents.get(name)
            if seen is None:
                self.intents[name] = [round(score, 3), 1, utterance.key]
            else:
                seen[0] = max(seen[0], round(score, 3))
                seen[1] += 1
        return True

    def dtmf(self, event_id: str, tone: str) -> None:
        if event_id not in self.tone_ids:
            self.tone_ids.append(event_id)
            self.tones += tone

    def summary(self, *, show_tones: bool = True) -> dict[str, Any]:
        """The `nlp.summary` event's data (docs/events.md)."""
        ordered = sorted(self.utterances, key=lambda u: (u.offset, u.key))
        participants: dict[str, dict[str, Any]] = {}
        previous: Utterance | None = None
        for u in ordered:
            stats = participants.setdefault(
                u.participant,
                {"talk_time_s": 0.0, "turns": 0, "interruptions": 0, "_sentiments": []},
            )
            stats["talk_time_s"] += u.duration / TICKS_PER_S
            stats["_sentiments"].append(u.sentiment)
            if previous is None or previous.participant != u.participant:
                stats["turns"] += 1
                if previous is not None and u.offset < previous.end:
                    stats["interruptions"] += 1  # began before the other stopped speaking
            if previous is None or u.end >= previous.end:
                previous = u
        for stats in participants.values():
            scores = stats.pop("_sentiments")
            stats["talk_time_s"] = round(stats["talk_time_s"], 2)
            stats["mean_sentiment"] = round(sum(scores) / len(scores), 3) if scores else None
        duration_s = self._duration_s(ordered)
        speech_s = _union_ticks((u.offset, u.end) for u in ordered) / TICKS_PER_S
        silence = max(0.0, 1.0 - speech_s / duration_s) if duration_s > 0 else None
        # Most frequent first; ties in the order they were first said (dicts keep it).
        top = sorted(self.phrases.items(), key=lambda item: -item[1])[:MAX_PHRASES]
        return {
            "duration_s": round(duration_s, 2),
            "utterances": len(ordered),
            "participants": participants,
            "silence_ratio": None if silence is None else round(silence, 3),
            "sentiment_trend": _trend([u.sentiment for u in ordered]),
            "key_phrases": [phrase for phrase, _ in top],
            "intents": [
                {"name": name, "score": score, "count": count, "first_utterance": first}
                for name, (score, count, first) in sorted(
                    self.intents.items(), key=lambda item: (-item[1][0], item[0])
                )
            ],
            "dtmf": self.tones if show_tones else None,
            "dtmf_count": len(self.tones),
        }

    def _duration_s(self, ordered: list[Utterance]) -> float:
        if self.started_ms is not None and self.ended_ms is not None:
            return max(0.0, (self.ended_ms - self.started_ms) / 1000)
        last = max((u.end for u in ordered), default=0)
        return last / TICKS_PER_S


def _union_ticks(intervals: Iterable[tuple[int, int]]) -> int:
    """Total length of the union of ``intervals`` (sorted by start)."""
    total = 0
    current: tuple[int, int] | None = None
    for start, end in intervals:
        if current is None or start > current[1]:
            if current is not None:
                total += current[1] - current[0]
            current = (start, end)
        else:
            current = (current[0], max(current[1], end))
    if current is not None:
        total += current[1] - current[0]
    return total


def _trend(scores: list[float]) -> dict[str, Any]:
    """How sentiment moved over the call: first half's mean against the second's."""
    if not scores:
        return {"direction": None, "first_half": None, "second_half": None}
    half = len(scores) // 2
    first = scores[:half] or scores
    second = scores[half:]
    a, b = sum(first) / len(first), sum(second) / len(second)
    direction = "steady"
    if b - a > TREND_DELTA:
        direction = "improving"
    elif a - b > TREND_DELTA:
        direction = "declining"
    return {"direction": direction, "first_half": round(a, 3), "second_half": round(b, 3)}
