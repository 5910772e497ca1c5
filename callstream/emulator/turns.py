"""Turn-taking latency of one emulated call (pure: times in, turns out; no clock, no I/O).

What the emulator sent and received on a call, reduced to what latency needs:

* per 20 ms tick, whether the caller side carried speech (a non-silent frame; on an unmixed
  call, any participant's) and when the tick was sent;
* when each agent audio message arrived; when each ``StopAudio`` arrived.

Times are seconds on one clock of the caller's choosing (the emulator passes seconds from the
call's first frame). From them, per caller **utterance**:

* An utterance is a run of speech ticks in which no gap of silent ticks lasts ``bridge_s``
  (default 0.4 s) or longer: a pause for breath inside a sentence does not end it.
* ``onset_s``: when the utterance's first speech frame was sent; ``end_s``: when its last
  speech frame was sent. A frame is sent once its 20 ms of audio were captured, so these are
  the moments the first / last of the speech could be on the wire (the sound itself began up
  to one frame earlier).
* The agent is **playing** at time t when an agent audio message arrived within
  ``playing_hold_s`` (default 0.15 s) before t, t included: while it plays, frames arrive every
  20 ms, paced about 100 ms ahead of their playback (the egress's lead), so the last frame of a
  reply plays out ~100 ms after it arrived; the rest of the hold absorbs jitter.
* ``talked_over``: the agent was playing at ``onset_s`` (the caller barged in).
* ``reply_ms``: ``end_s`` → the first agent audio message that arrived after it, in ms; only
  when the agent was not playing at ``end_s`` (else it is the same audio going on, not a
  reply), and only if that message arrived before the next utterance's onset (a later one may
  answer the next utterance instead); else None.
* ``stop_ms``: ``onset_s`` → the first ``StopAudio`` that arrived after it, in ms; only when
  ``talked_over``, and only if it arrived before the next utterance's onset; else None.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

BRIDGE_S = 0.4  # silence shorter than this inside an utterance does not end it
PLAYING_HOLD_S = 0.15  # the egress's 100 ms lead + 50 ms of jitter


@dataclass(frozen=True, slots=True)
class Turn:
    """One caller utterance and how the agent reacted (definitions: the module docstring).

    ``first_tick`` / ``last_tick`` index the call's 20 ms ticks (0 = the first frame); times
    are seconds on the clock the inputs used; latencies are ms.
    """

    first_tick: int
    last_tick: int
    onset_s: float
    end_s: float
    talked_over: bool
    reply_ms: float | None
    stop_ms: float | None

    @property
    def speech_ms(self) -> float:
        """First to last speech frame sent, plus the last frame's 20 ms."""
        return (self.end_s - self.onset_s) * 1000 + 20


def utterances(
    speech: Sequence[bool], sent_s: Sequence[float], bridge_s: float = BRIDGE_S
) -> list[tuple[int, int]]:
    """(first tick, last tick) of each utterance: runs of speech ticks joined across silent
    gaps shorter than ``bridge_s`` (measured between the send times of the speech frames)."""
    ticks = min(len(speech), len(sent_s))
    spans: list[tuple[int, int]] = []
    first = last = -1
    for k in range(ticks):
        if not speech[k]:
            continue
        if last >= 0 and sent_s[k] - sent_s[last] - 0.020 < bridge_s:
            last = k
            continue
        if last >= 0:
            spans.append((first, last))
        first = last = k
    if last >= 0:
        spans.append((first, last))
    return spans


def playing_at(audio_s: Sequence[float], t: float, hold_s: float = PLAYING_HOLD_S) -> bool:
    """Whether an audio message of ``audio_s`` (sorted) arrived within ``hold_s`` before ``t``."""
    k = bisect_right(audio_s, t)
    return k > 0 and t - audio_s[k - 1] <= hold_s


def _first_after(times: Sequence[float], t: float, before: float) -> float | None:
    """The first of ``times`` (sorted) strictly after ``t`` and before ``before``."""
    k = bisect_right(times, t)
    if k < len(times) and times[k] < before:
        return times[k]
    return None


def analyse(
    speech: Sequence[bool],
    sent_s: Sequence[float],
    audio_s: Sequence[float],
    stops_s: Sequence[float],
    *,
    bridge_s: float = BRIDGE_S,
    playing_hold_s: float = PLAYING_HOLD_S,
) -> list[Turn]:
    """The call's turns, one per caller utterance, in order.

    ``speech[k]``: tick k carried caller speech; ``sent_s[k]``: when tick k was sent (ticks
    beyond the shorter of the two are ignored: a call that closed early sent fewer);
    ``audio_s`` / ``stops_s``: arrival times of agent audio messages and of StopAudio messages,
    in order (sorted here if they are not).
    """
    audio = sorted(audio_s)
    stops = sorted(stops_s)
    spans = utterances(speech, sent_s, bridge_s)
    turns: list[Turn] = []
    for i, (first, last) in enumerate(spans):
        onset, end = sent_s[first], sent_s[last]
        next_onset = sent_s[spans[i + 1][0]] if i + 1 < len(spans) else float("inf")
        talked_over = playing_at(audio, onset, playing_hold_s)
        reply_ms = stop_ms = None
        if not playing_at(audio, end, playing_hold_s):
            reply = _first_after(audio, end, next_onset)
            if reply is not None:
                reply_ms = (reply - end) * 1000
        if talked_over:
            stop = _first_after(stops, onset, next_onset)
            if stop is not None:
                stop_ms = (stop - onset) * 1000
        turns.append(Turn(first, last, onset, end, talked_over, reply_ms, stop_ms))
    return turns
