"""The utterance segmenter on synthetic audio (pure)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.workers.vad import (
    FRAME_MS,
    MAX_UTTERANCE_FRAMES,
    PREROLL_FRAMES,
    START_WINDOW,
    STOP_FRAMES,
    Segmenter,
    SpeechAudio,
    SpeechStarted,
    SpeechStopped,
    VadEvent,
)

RATE = 16000
FRAME = RATE * FRAME_MS // 1000


def voiced(frames: int, seed: int = 0) -> list[bytes]:
    """A vowel-like buzz (150 Hz harmonics, varying) that WebRTC's VAD calls speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames * FRAME) / RATE
    f0 = 150 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 12)) * (
        0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    )
    wave = wave + 0.02 * rng.standard_normal(t.size)
    pcm = (wave / np.abs(wave).max() * 12000).astype("<i2").tobytes()
    return [pcm[i * FRAME * 2 : (i + 1) * FRAME * 2] for i in range(frames)]


def quiet(frames: int) -> list[bytes]:
    return [bytes(FRAME * 2)] * frames


def run(segmenter: Segmenter, frames: list[bytes]) -> list[VadEvent]:
    events: list[VadEvent] = []
    for frame in frames:
        events.extend(segmenter.push(frame))
    return events


def test_one_utterance_is_found_with_its_preroll_and_hangover() -> None:
    frames = quiet(50) + voiced(100) + quiet(60)
    events = run(Segmenter(RATE), frames)
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    assert len(starts) == len(stops) == 1
    # Speech starts at 1000 ms and ends at 3000 ms; WebRTC's detector holds on a few frames.
    assert starts[0].offset_ms == pytest.approx(1000, abs=2 * FRAME_MS)
    assert stops[0].offset_ms == pytest.approx(3000, abs=8 * FRAME_MS)
    assert (
        starts[0].offset_ms - (PREROLL_FRAMES + START_WINDOW) * FRAME_MS
        <= starts[0].audio_offset_ms
        < starts[0].offset_ms
    )
    # The audio is contiguous from the pre-roll to the hangover that confirmed the stop.
    audio = starts[0].audio + b"".join(e.audio for e in events if isinstance(e, SpeechAudio))
    begin = starts[0].audio_offset_ms // FRAME_MS
    assert audio == b"".join(frames[begin : begin + len(audio) // (FRAME * 2)])
    assert begin + len(audio) // (FRAME * 2) >= stops[0].offset_ms // FRAME_MS + STOP_FRAMES


def test_frames_flagged_silent_are_never_speech() -> None:
    segmenter = Segmenter(RATE)
    events = [e for frame in voiced(100) for e in segmenter.push(frame, silent=True)]
    assert events == []


def test_two_utterances_separated_by_a_pause() -> None:
    frames = voiced(60, 1) + quiet(STOP_FRAMES + 20) + voiced(60, 2) + quiet(STOP_FRAMES + 20)
    kinds = [type(e) for e in run(Segmenter(RATE), frames) if not isinstance(e, SpeechAudio)]
    assert kinds == [SpeechStarted, SpeechStopped, SpeechStarted, SpeechStopped]


def test_flush_stops_an_open_utterance_at_the_end_of_the_stream() -> None:
    segmenter = Segmenter(RATE)
    run(segmenter, voiced(40))
    assert segmenter.in_speech
    assert segmenter.flush() == [SpeechStopped(40 * FRAME_MS)]
    assert segmenter.flush() == []


def test_wrong_frame_sizes_and_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="640-byte frames"):
        Segmenter(RATE).push(bytes(100))
    with pytest.raises(ValueError, match="24000 Hz"):
        Segmenter(24000)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 80)), max_size=8))
def test_events_are_well_formed_for_any_mix(runs: list[tuple[bool, int]]) -> None:
    frames = [f for speech, n in runs for f in (voiced(n) if speech else quiet(n))]
    segmenter = Segmenter(RATE)
    events = [*run(segmenter, frames), *segmenter.flush()]
    open_ = False
    last_stop = -1
    for event in events:
        if isinstance(event, SpeechStarted):
            assert not open_
            assert event.offset_ms >= last_stop
            open_ = True
        elif isinstance(event, SpeechAudio):
            assert open_
        else:
            assert open_
            open_, last_stop = False, event.offset_ms
    assert not open_


def test_an_utterance_longer_than_the_maximum_is_split_without_losing_a_frame() -> None:
    """32 s of continuous "speech" (music on hold, say): an utterance ends at 20 s and the
    next begins with the very next frame; together they carry every frame once."""
    frames = quiet(10) + voiced(1600) + quiet(60)
    events = run(Segmenter(RATE), frames)
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    assert len(starts) == len(stops) == 2
    first_length_ms = stops[0].offset_ms - starts[0].offset_ms
    # Counted from when the detector was sure; the speech began up to a window earlier.
    assert (
        MAX_UTTERANCE_FRAMES * FRAME_MS
        <= first_length_ms
        <= (MAX_UTTERANCE_FRAMES + START_WINDOW) * FRAME_MS
    )
    assert starts[1].offset_ms == starts[1].audio_offset_ms == stops[0].offset_ms
    audio = sum(len(e.audio) for e in events if isinstance(e, SpeechStarted | SpeechAudio)) // (
        FRAME * 2
    )
    end_frame = stops[1].offset_ms // FRAME_MS + STOP_FRAMES  # the hangover is in the audio
    assert audio == end_frame - starts[0].audio_offset_ms // FRAME_MS
