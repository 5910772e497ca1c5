"""The transcriber core with a stand-in engine (pure: no Redis, no speech engine)."""

from __future__ import annotations

from dataclasses import replace

from callstream.shared.entries import InFrame
from callstream.workers.stt.engine import Result
from callstream.workers.stt.transcript import (
    SPEECH_STARTED,
    SPEECH_STOPPED,
    TICKS_PER_MS,
    TRANSCRIPT,
)
from callstream.workers.transcribe import Transcriber
from tests.unit.workers.test_vad import quiet, voiced


class Echoing:
    """Says "words" for every utterance; a final spanning what was fed."""

    def __init__(self, rate_hz: int) -> None:
        self.fed = 0
        self.speech_ms = 0
        self.rate_hz = rate_hz

    def start(self, audio_offset_ms: int, speech_offset_ms: int) -> None:
        self.fed, self.speech_ms = 0, speech_offset_ms

    def feed(self, pcm: bytes) -> list[Result]:
        self.fed += len(pcm) * 1000 // (2 * self.rate_hz)
        return []

    def stop(self) -> list[Result]:
        return [Result("words", True, self.speech_ms, self.fed, 1.0)]

    def close(self) -> list[Result]:
        return []


def frames_at(start_ms: int, pcm_frames: list[bytes], first_seq: int) -> list[tuple[str, InFrame]]:
    return [
        (
            f"{first_seq + i + 1}-0",
            InFrame(first_seq + i, 1_700_000_000_000 + start_ms + 20 * i, "4:+1", 1, False, pcm),
        )
        for i, pcm in enumerate(pcm_frames)
    ]


def test_offsets_follow_the_frames_timestamps_across_a_gap_in_a_channel() -> None:
    """An unmixed participant speaks at 1 s, drops out of the dominant four for 10 s (no
    frames), and speaks again: the second utterance is placed at its real time."""
    core = Transcriber("c", 16000, Echoing)
    first = quiet(50) + voiced(50) + quiet(40)  # speech 1.0-2.0 s, frames end at 2.8 s
    second = quiet(10) + voiced(50) + quiet(40)  # resumes at 12.8 s: speech at 13.0-14.0 s
    events = core.process(frames_at(0, first, 0), ended=False)
    events += core.process(frames_at(12_800, second, len(first)), ended=True)
    starts = [e.data["offset"] // TICKS_PER_MS for e in events if e.type == SPEECH_STARTED]
    stops = [e.data["offset"] // TICKS_PER_MS for e in events if e.type == SPEECH_STOPPED]
    assert all(abs(s - want) <= 40 for s, want in zip(starts, (1000, 13000), strict=True))
    assert all(abs(s - want) <= 160 for s, want in zip(stops, (2000, 14000), strict=True))
    finals = [e for e in events if e.type == TRANSCRIPT]
    assert [e.data["participantRawID"] for e in finals] == ["4:+1", "4:+1"]
    assert [e.data["offset"] // TICKS_PER_MS for e in finals] == starts
    # Every id names its utterance by where it starts: no two are alike.
    assert len({(e.type, e.key) for e in events}) == len(events)


def test_the_resume_point_is_the_open_utterance_or_the_detector_window() -> None:
    core = Transcriber("c", 16000, Echoing)
    frames = frames_at(0, quiet(30) + voiced(30), 0)
    core.process(frames[:20], ended=False)
    assert core.earliest_needed == frames[20 - 15][0]  # the detector's window: 15 frames
    core.process(frames[20:], ended=False)
    # In speech: the utterance's first frame (its pre-roll) — before the speech at frame 30.
    assert core.earliest_needed is not None
    first = int(core.earliest_needed.split("-")[0]) - 1
    assert 15 <= first < 30


def test_a_channel_passed_to_another_participant_finishes_the_first_ones_utterance() -> None:
    """ACS replaces a participant who left the dominant four; their frames stop mid-utterance
    and the channel carries someone else. The first participant's utterance still ends, with
    its speech.stopped and its final, attributed to them."""
    core = Transcriber("c", 16000, Echoing)

    def on_channel_1(
        participant: str, start_ms: int, pcm_frames: list[bytes], first_seq: int
    ) -> list[tuple[str, InFrame]]:
        return [
            (entry_id, replace(frame, participant=participant))
            for entry_id, frame in frames_at(start_ms, pcm_frames, first_seq)
        ]

    cut = on_channel_1("8:acs:a", 0, quiet(20) + voiced(40), 0)  # still speaking at 1.2 s
    then = on_channel_1("4:+1b", 1_200, voiced(30) + quiet(30), len(cut))
    events = core.process(cut, ended=False) + core.process(then, ended=True)
    kinds = [(e.type, e.data["participantRawID"]) for e in events if e.type != TRANSCRIPT]
    assert kinds == [
        (SPEECH_STARTED, "8:acs:a"),
        (SPEECH_STOPPED, "8:acs:a"),
        (SPEECH_STARTED, "4:+1b"),
        (SPEECH_STOPPED, "4:+1b"),
    ]
    finals = [e for e in events if e.type == TRANSCRIPT]
    assert [e.data["participantRawID"] for e in finals] == ["8:acs:a", "4:+1b"]
    assert len({(e.type, e.key) for e in events}) == len(events)


def test_a_very_long_utterance_comes_out_in_bounded_pieces() -> None:
    """25 s without a pause: two utterances (20 s, then the rest), each with its events and
    its final, and the resume point moves on to the second one's first frame."""
    core = Transcriber("c", 16000, Echoing)
    frames = frames_at(0, voiced(1250), 0)
    events = core.process(frames[:1100], ended=False)
    assert core.earliest_needed is not None
    resume = int(core.earliest_needed.split("-")[0]) - 1
    assert resume > 1000  # not the call's first frame: the second utterance's
    events += core.process(frames[1100:], ended=True)
    kinds = [e.type for e in events]
    assert kinds.count(SPEECH_STARTED) == kinds.count(SPEECH_STOPPED) == 2
    finals = [e for e in events if e.type == TRANSCRIPT]
    assert len(finals) == 2
    assert len({(e.type, e.key) for e in events}) == len(events)


def test_participants_taking_turns_on_a_channel_reuse_their_recognizers() -> None:
    """Five participantRawIDs take turns on one channel, a new one every 10 frames, each
    speaking (a hostile client; ACS reorders its dominant speakers more gently): 50 turns, and
    no more than one recognizer per participant is ever made."""
    core = Transcriber("c", 16000, Echoing)
    speakers = [f"4:+{n}" for n in range(5)]
    pcm_frames = voiced(500)
    frames = [
        (entry_id, replace(frame, participant=speakers[i // 10 % 5]))
        for i, (entry_id, frame) in enumerate(frames_at(0, pcm_frames, 0))
    ]
    events = core.process(frames[:250], ended=False) + core.process(frames[250:], ended=True)
    assert sum(e.type == SPEECH_STARTED for e in events) == 50  # every turn was heard
    assert core.recognizers_made == 5


def test_a_participant_who_never_speaks_costs_no_recognizer() -> None:
    core = Transcriber("c", 16000, Echoing)
    core.process(frames_at(0, quiet(200), 0), ended=True)
    assert core.recognizers_made == 0
