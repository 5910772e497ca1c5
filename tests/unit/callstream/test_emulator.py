"""The emulator's pure parts: dominant speakers, playback model, WAV loading, the script."""

from __future__ import annotations

import base64
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.emulator.playback import Playback
from callstream.emulator.speakers import DominantSpeakers
from callstream.emulator.wav import load_wav
from callstream.shared.audio import mix
from callstream.shared.errors import ConfigError
from callstream.simulate import build_script, parse_dtmf, participant_ids

FRAME = 640


# ---------------------------------------------------------------- dominant speakers


def test_up_to_four_participants_are_all_streamed_in_fixed_slots() -> None:
    speakers = DominantSpeakers(3)
    assert speakers.update([0.0, 5.0, 1.0]) == [0, 1, 2]
    assert speakers.update([9.0, 0.0, 0.0]) == [0, 1, 2]


def test_a_clearly_louder_fifth_speaker_takes_the_weakest_slot() -> None:
    speakers = DominantSpeakers(5)
    for _ in range(50):
        slots = speakers.update([4.0, 3.0, 2.0, 1.0, 0.0])
    assert slots == [0, 1, 2, 3]
    for _ in range(50):
        slots = speakers.update([4.0, 3.0, 2.0, 1.0, 100.0])
    assert slots == [0, 1, 2, 4]  # participant 4 took participant 3's slot; the others kept theirs


def test_a_slightly_louder_speaker_does_not_make_slots_flap() -> None:
    speakers = DominantSpeakers(5, hysteresis_db=6.0)
    for _ in range(100):
        slots = speakers.update([4.0, 3.0, 2.0, 1.0, 1.5])  # +1.8 dB only
    assert slots == [0, 1, 2, 3]


@given(
    st.integers(1, 8), st.lists(st.lists(st.floats(0, 1e9), min_size=8, max_size=8), max_size=60)
)
def test_never_more_than_four_streams_and_no_duplicates(n: int, frames: list[list[float]]) -> None:
    speakers = DominantSpeakers(n)
    for powers in frames:
        slots = speakers.update(powers[:n])
        assert len(slots) == min(n, 4)
        assert len(set(slots)) == len(slots)
        assert all(0 <= p < n for p in slots)


@given(st.lists(st.floats(0, 1e6), min_size=6, max_size=6))
def test_stable_energies_give_stable_slots(powers: list[float]) -> None:
    speakers = DominantSpeakers(6)
    for _ in range(200):
        speakers.update(powers)
    settled = speakers.update(powers)
    assert all(speakers.update(powers) == settled for _ in range(20))


# ---------------------------------------------------------------- playback model


def frame(value: int) -> bytes:
    return bytes([value]) * FRAME


def test_playback_plays_one_frame_per_slot_and_silence_when_dry() -> None:
    playback = Playback(FRAME, start_s=0.0)
    playback.push(frame(1) + frame(2), now_s=0.005)  # arrives during slot 0: plays from slot 1
    playback.advance(0.09)  # slots 0..4 have begun
    assert playback.recording == bytes(FRAME) + frame(1) + frame(2) + bytes(FRAME) * 2


def test_underruns_count_dry_spells_between_audio() -> None:
    playback = Playback(FRAME, start_s=0.0)
    playback.push(frame(1), 0.001)
    playback.push(frame(2), 0.081)  # slots 2..4 play nothing
    playback.advance(0.2)
    assert playback.underruns == 1
    assert playback.underrun_slots == 3


def test_stop_drops_what_is_queued() -> None:
    playback = Playback(FRAME, start_s=0.0)
    playback.push(frame(1) * 10, 0.001)
    playback.stop(0.05)  # slots 0..2 have begun: slots 1 and 2 played a frame each
    playback.advance(0.3)
    assert playback.stops == 1
    assert playback.recording == bytes(FRAME) + frame(1) * 2 + bytes(FRAME) * 13
    assert playback.frames_received == 10


def test_partial_messages_are_regrouped_into_frames() -> None:
    playback = Playback(FRAME, start_s=0.0)
    playback.push(frame(3)[:100], 0.001)
    playback.push(frame(3)[100:], 0.002)
    playback.advance(0.05)
    assert playback.frames_received == 1
    assert frame(3) in playback.recording


# ---------------------------------------------------------------- WAV loading


def write(path: Path, data: bytes, rate: int, width: int, channels: int) -> str:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(data)
    return str(path)


def sine(rate: int, seconds: float = 0.5, freq: float = 440.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_of_any_width_loads_as_pcm16(tmp_path: Path, width: int) -> None:
    x = sine(16000)
    scale = 2 ** (8 * width - 1)
    ints = np.round(x * scale).astype(np.int64)
    if width == 1:
        data = (ints + 128).astype(np.uint8).tobytes()
    else:
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints)
    pcm = load_wav(write(tmp_path / "a.wav", data, 16000, width, 1), 16000)
    got = np.frombuffer(pcm, "<i2") / 32768.0
    assert got.size == x.size
    assert np.max(np.abs(got - x)) < 2 / 2 ** min(8 * width - 1, 15) + 1e-4


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_wav_of_any_rate_is_resampled(tmp_path: Path, rate: int) -> None:
    x = sine(rate, seconds=1.0)
    stereo = np.stack([x, x], axis=1)
    data = np.round(stereo * 32767).astype("<i2").tobytes()
    pcm = load_wav(write(tmp_path / "s.wav", data, rate, 2, 2), 24000)
    got = np.frombuffer(pcm, "<i2") / 32768.0
    assert abs(got.size - 24000) <= 1
    # Still a 440 Hz tone of the same level.
    spectrum = np.abs(np.fft.rfft(got))
    assert abs(np.argmax(spectrum) * 24000 / got.size - 440) < 2
    assert np.sqrt(np.mean(got[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_a_file_that_is_not_a_wav_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"not a wav")
    with pytest.raises(ConfigError, match=r"cannot read .* as a PCM WAV file"):
        load_wav(str(path), 16000)


# ---------------------------------------------------------------- the script


def decode(tail: str) -> dict[str, object]:
    body: dict[str, object] = json.loads(
        '{"kind":"AudioData","audioData":{"timestamp":"t",' + tail
    )["audioData"]
    return body


def test_mixed_script_sums_participants_clip_safely() -> None:
    a = np.full(320 * 3, 30000, dtype="<i2").tobytes()
    b = np.full(320 * 2, 10000, dtype="<i2").tobytes()
    script = build_script([a, b], 16000, "mixed")
    assert len(script) == 3
    first = decode(script[0][0].tail)
    assert "participantRawID" not in first
    assert base64.b64decode(str(first["data"])) == mix([a[:640], b[:640]])
    assert np.frombuffer(base64.b64decode(str(first["data"])), "<i2").max() == 32767
    assert decode(script[2][0].tail)["silent"] is False  # a alone, b padded with silence


def test_unmixed_script_tags_participants_and_flags_silence() -> None:
    loud = np.full(480 * 2, 5000, dtype="<i2").tobytes()
    quiet = bytes(960 * 2)
    script = build_script([loud, quiet, quiet], 24000, "unmixed")
    assert len(script) == 2
    bodies = [decode(s.tail) for s in script[0]]
    ids = [b["participantRawID"] for b in bodies]
    assert ids == participant_ids(3)
    assert [b["silent"] for b in bodies] == [False, True, True]
    assert all(len(base64.b64decode(str(b["data"]))) == 960 for b in bodies)


def test_participant_ids_look_like_acs_raw_ids() -> None:
    ids = participant_ids(4)
    assert [i.split(":")[0] for i in ids] == ["8", "4", "8", "4"]
    assert ids[0].startswith("8:acs:")
    assert ids[1].startswith("4:+1425555")
    assert len(set(ids)) == 4


@pytest.mark.parametrize(
    ("spec", "expected"), [("12#@1.5", ("12#", 1.5)), ("a@0", ("A", 0.0)), ("*@2", ("*", 2.0))]
)
def test_dtmf_specs_parse(spec: str, expected: tuple[str, float]) -> None:
    assert parse_dtmf(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("12#", "DIGITS@SECONDS"),
        ("@1", "DIGITS@SECONDS"),
        ("1x@1", "0-9"),
        ("1@soon", "seconds"),
        ("1@-1", "negative"),
    ],
)
def test_bad_dtmf_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_dtmf(spec)
