"""Turn analysis of an emulated call (pure): utterances, replies, barge-in stops."""

from __future__ import annotations

import pytest

from callstream.emulator.turns import Turn, analyse, playing_at, utterances
from callstream.simulate import CallResult, format_turns

TICK_S = 0.020


def timeline(seconds: float, *talk: tuple[float, float]) -> tuple[list[bool], list[float]]:
    """Ticks of ``seconds`` of call, speech during each (start_s, end_s) of ``talk``; tick k
    sent at k * 20 ms."""
    ticks = round(seconds / TICK_S)
    sent = [k * TICK_S for k in range(ticks)]
    speech = [any(a <= t < b for a, b in talk) for t in sent]
    return speech, sent


def frames(start_s: float, end_s: float) -> list[float]:
    """Agent audio arriving every 20 ms over [start_s, end_s)."""
    return [start_s + k * TICK_S for k in range(round((end_s - start_s) / TICK_S))]


def test_a_reply_is_measured_from_the_last_speech_frame_to_the_first_agent_frame() -> None:
    speech, sent = timeline(6.0, (1.0, 2.0))
    [turn] = analyse(speech, sent, frames(2.7, 4.0), [])
    assert (turn.first_tick, turn.last_tick) == (50, 99)
    assert turn.onset_s == pytest.approx(1.0)
    assert turn.end_s == pytest.approx(1.98)
    assert turn.speech_ms == pytest.approx(1000)
    assert not turn.talked_over
    assert turn.reply_ms == pytest.approx(720)
    assert turn.stop_ms is None


def test_an_utterance_without_any_agent_audio_after_it_has_no_reply() -> None:
    speech, sent = timeline(6.0, (3.0, 4.0))
    greeting = frames(0.1, 2.0)  # played before the caller spoke: not a reply to it
    [turn] = analyse(speech, sent, greeting, [])
    assert turn.reply_ms is None
    assert not turn.talked_over


def test_talking_over_the_agent_is_measured_onset_to_stop() -> None:
    speech, sent = timeline(8.0, (1.0, 3.0))
    greeting = frames(0.2, 1.3)  # stopped: nothing arrives after the stop
    [turn] = analyse(speech, sent, greeting + frames(3.8, 5.0), [1.25])
    assert turn.talked_over
    assert turn.stop_ms == pytest.approx(250)
    # The greeting was over by the end of the speech: the audio after it is the reply.
    assert turn.reply_ms == pytest.approx(820)


def test_talking_over_an_agent_that_does_not_stop_has_no_stop_and_no_reply() -> None:
    speech, sent = timeline(8.0, (1.0, 2.0))
    greeting = frames(0.2, 3.5)  # plays on through the caller's speech
    [turn] = analyse(speech, sent, greeting, [])
    assert turn.talked_over
    assert turn.stop_ms is None
    assert turn.reply_ms is None  # still playing at the end of the speech: not a reply


def test_a_stop_without_talking_over_is_not_a_barge_in() -> None:
    speech, sent = timeline(6.0, (2.0, 3.0))
    [turn] = analyse(speech, sent, frames(0.0, 1.0), [2.1])
    assert not turn.talked_over
    assert turn.stop_ms is None


def test_the_lead_after_the_last_frame_still_counts_as_playing() -> None:
    audio = frames(0.0, 1.0)  # the last frame arrived at 0.98 s and plays out ~100 ms later
    assert playing_at(audio, 0.5)
    assert playing_at(audio, 1.08)
    assert not playing_at(audio, 1.2)
    assert not playing_at(audio, -0.1)


def test_short_pauses_are_bridged_long_ones_split_utterances() -> None:
    speech, sent = timeline(6.0, (1.0, 1.5), (1.8, 2.2), (3.0, 3.5))
    assert utterances(speech, sent) == [(50, 109), (150, 174)]
    assert utterances(speech, sent, bridge_s=0.2) == [(50, 74), (90, 109), (150, 174)]
    assert utterances([False] * 10, [k * TICK_S for k in range(10)]) == []


def test_a_reply_arriving_after_the_next_utterance_began_is_not_attributed() -> None:
    speech, sent = timeline(10.0, (1.0, 2.0), (3.0, 4.0))
    turns = analyse(speech, sent, frames(4.5, 6.0), [])
    assert [t.reply_ms for t in turns] == [None, pytest.approx(4.5e3 - 3.98e3)]


def test_ticks_beyond_the_last_one_sent_are_ignored() -> None:
    speech, sent = timeline(4.0, (1.0, 3.0))
    [turn] = analyse(speech, sent[:100], [], [])  # the call closed at 2 s
    assert turn == Turn(50, 99, sent[50], sent[99], False, None, None)


def test_the_cli_table_lists_each_utterance_and_the_percentiles() -> None:
    result = CallResult("call-1")
    result.turns = [
        Turn(50, 99, 1.0, 1.98, False, 720.0, None),
        Turn(150, 199, 3.0, 3.98, True, None, 250.0),
    ]
    table = format_turns([result]).splitlines()
    assert table[1].split() == ["call-1", "1", "1.00", "1.98", "720", "-"]
    assert table[2].split() == ["call-1", "2", "3.00", "3.98", "yes", "-", "250"]
    assert table[3] == "end of speech -> reply: p50 720 ms  p95 720 ms  max 720 ms  n 1"
    assert table[4].startswith("onset -> StopAudio: p50 250 ms")
