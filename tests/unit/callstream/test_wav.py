"""Writing WAVs: two mono tracks as one stereo file (the demo's conversation.wav)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.emulator.wav import load_wav, write_stereo_wav

RATE = 16000


def pcm(*samples: int) -> bytes:
    return np.array(samples, dtype="<i2").tobytes()


def channels(path: Path) -> tuple[int, int, np.ndarray]:
    """(channel count, rate, samples as rows of one sample per channel)."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2
        count, rate = wav.getnchannels(), wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    return count, rate, np.frombuffer(raw, dtype="<i2").reshape(-1, count)


def test_stereo_wav_has_the_left_track_on_the_left_and_the_right_on_the_right(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stereo.wav"
    write_stereo_wav(str(path), pcm(1, -2, 32767), pcm(-32768, 5, 6), 24000)
    count, rate, samples = channels(path)
    assert (count, rate) == (2, 24000)
    assert samples.tolist() == [[1, -32768], [-2, 5], [32767, 6]]


def test_the_shorter_track_is_padded_with_silence_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    write_stereo_wav(str(path), pcm(7), pcm(1, 2, 3), RATE)
    assert channels(path)[2].tolist() == [[7, 1], [0, 2], [0, 3]]
    write_stereo_wav(str(path), pcm(1, 2, 3), b"", RATE)
    assert channels(path)[2].tolist() == [[1, 0], [2, 0], [3, 0]]


def test_two_empty_tracks_make_an_empty_stereo_wav(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    write_stereo_wav(str(path), b"", b"", RATE)
    count, _, samples = channels(path)
    assert count == 2
    assert samples.size == 0


def test_a_track_with_half_a_sample_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        write_stereo_wav(str(tmp_path / "stereo.wav"), b"\x01", b"", RATE)


def test_loading_the_stereo_wav_as_mono_averages_the_channels(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    write_stereo_wav(str(path), pcm(1000, -2000, 0), pcm(3000, 2000, 0), RATE)
    assert np.frombuffer(load_wav(str(path), RATE), dtype="<i2").tolist() == [2000, 0, 0]


@settings(max_examples=50, deadline=None)
@given(
    left=st.lists(st.integers(-32768, 32767), max_size=300),
    right=st.lists(st.integers(-32768, 32767), max_size=300),
)
def test_each_channel_reads_back_as_its_track(
    tmp_path_factory: pytest.TempPathFactory, left: list[int], right: list[int]
) -> None:
    path = tmp_path_factory.mktemp("wav") / "stereo.wav"
    write_stereo_wav(str(path), pcm(*left), pcm(*right), RATE)
    samples = channels(path)[2]
    length = max(len(left), len(right))
    assert samples.shape == (length, 2)
    assert samples[:, 0].tolist() == left + [0] * (length - len(left))
    assert samples[:, 1].tolist() == right + [0] * (length - len(right))
