"""The agent's barge-in detector (pure): voice holds the agent, enough of it stops it, and a
short burst, a cough-like noise or a hiss lets it play on."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from callstream.workers.agent.bargein import BargeIn, BargeInConfig, Decision, periodicity
from callstream.workers.vad import FRAME_MS

RATE = 16000


def voiced(seconds: float, pitch_hz: float = 140.0, seed: int = 0) -> npt.NDArray[np.float64]:
    """A vowel-like sound: a few harmonics of a slightly wavering pitch."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = pitch_hz * (1 + 0.03 * np.sin(2 * np.pi * 4 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    wave = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 8))
    return 6000 * np.asarray(wave, dtype=np.float64)


def noise(seconds: float, level: float = 6000, seed: int = 1) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).normal(0, level, int(seconds * RATE))


def cough(seconds: float = 0.35, seed: int = 2) -> npt.NDArray[np.float64]:
    """A burst of noise with a sharp attack and a decay, like a cough."""
    n = int(seconds * RATE)
    envelope = np.exp(-np.arange(n) / (0.25 * n))
    return noise(seconds, 12000, seed) * envelope


def silence(seconds: float) -> npt.NDArray[np.float64]:
    return np.zeros(int(seconds * RATE))


def decisions(
    *parts: npt.NDArray[np.float64], config: BargeInConfig | None = None, rate: int = RATE
) -> list[tuple[Decision, int]]:
    """Each decision and the ms (from the start) of the frame that made it, up to a stop
    (after which the agent no longer listens for a barge-in: it is not playing)."""
    samples = np.concatenate([*parts, silence(1.0)])
    if rate != RATE:
        samples = np.interp(
            np.arange(int(samples.size * rate / RATE)) * RATE / rate,
            np.arange(samples.size),
            samples,
        )
    pcm = np.clip(samples, -32768, 32767).astype("<i2").tobytes()
    size = rate * FRAME_MS // 1000 * 2
    detector = BargeIn(rate, config)
    out = []
    for k in range(len(pcm) // size):
        decision = detector.push(pcm[k * size : (k + 1) * size])
        if decision is not None:
            out.append((decision, k * FRAME_MS))
            if decision is Decision.STOP:
                break
    return out


def test_a_voiced_sound_is_periodic_and_noise_is_not() -> None:
    assert periodicity(voiced(0.04)[:640], RATE) > 0.8
    assert periodicity(noise(0.04)[:640], RATE) < 0.3
    assert periodicity(silence(0.04)[:640], RATE) == 0.0


def test_talking_over_the_agent_holds_it_at_once_then_stops_it() -> None:
    made = decisions(silence(0.2), voiced(1.5))
    assert [d for d, _ in made] == [Decision.HOLD, Decision.STOP]
    (_, hold_ms), (_, stop_ms) = made
    config = BargeInConfig()
    assert 200 + config.hold_ms - FRAME_MS <= hold_ms <= 200 + config.hold_ms + 3 * FRAME_MS
    assert 200 + config.min_speech_ms - FRAME_MS <= stop_ms <= 200 + config.min_speech_ms + 60


def test_words_with_short_pauses_between_them_add_up_to_a_barge_in() -> None:
    words = [voiced(0.2, seed=i) for i in range(3)]
    made = decisions(words[0], silence(0.25), words[1], silence(0.25), words[2])
    assert [d for d, _ in made] == [Decision.HOLD, Decision.STOP]


@pytest.mark.parametrize("seconds", [0.15, 0.3, 0.45])
def test_a_backchannel_shorter_than_the_minimum_holds_the_agent_then_lets_it_play_on(
    seconds: float,
) -> None:
    made = decisions(silence(0.2), voiced(seconds))
    assert [d for d, _ in made] == [Decision.HOLD, Decision.RESUME]
    resume_ms = made[1][1]
    end_ms = 200 + seconds * 1000
    assert end_ms + BargeInConfig().gap_ms - 2 * FRAME_MS <= resume_ms  # after the gap


def test_a_click_too_short_to_hold_changes_nothing() -> None:
    assert decisions(silence(0.2), voiced(0.06)) == []


@pytest.mark.parametrize(
    "sound",
    [
        pytest.param(cough(), id="cough"),
        pytest.param(noise(0.3), id="noise-burst"),
        pytest.param(noise(2.0, 3000), id="hiss"),
    ],
)
def test_noise_neither_holds_nor_stops_the_agent(sound: npt.NDArray[np.float64]) -> None:
    assert decisions(silence(0.2), sound) == []


def test_voice_counts_at_24_khz_too() -> None:
    made = decisions(silence(0.2), voiced(1.5), rate=24000)
    assert [d for d, _ in made] == [Decision.HOLD, Decision.STOP]


def test_the_minimum_is_configurable() -> None:
    config = BargeInConfig(hold_ms=100, min_speech_ms=1200)
    made = decisions(silence(0.2), voiced(1.0), config=config)
    assert [d for d, _ in made] == [Decision.HOLD, Decision.RESUME]  # 1 s is now too short


def test_silent_frames_count_as_no_voice() -> None:
    detector = BargeIn(RATE)
    frame = np.clip(voiced(0.02), -32768, 32767).astype("<i2").tobytes()
    assert all(detector.push(frame, silent=True) is None for _ in range(100))


def test_reset_forgets_a_burst() -> None:
    detector = BargeIn(RATE)
    pcm = np.clip(voiced(0.3), -32768, 32767).astype("<i2").tobytes()
    made = [detector.push(pcm[i : i + 640]) for i in range(0, len(pcm) - 639, 640)]
    assert Decision.HOLD in made
    assert detector.held
    detector.reset()
    assert not detector.held


@pytest.mark.parametrize(
    ("hold", "minimum", "gap", "voicing"),
    [(0, 500, 400, 0.5), (600, 500, 400, 0.5), (100, 500, 10, 0.5), (100, 500, 400, 1.0)],
)
def test_nonsense_settings_are_refused(hold: int, minimum: int, gap: int, voicing: float) -> None:
    with pytest.raises(ValueError, match=r"hold_ms|gap_ms|voicing"):
        BargeInConfig(hold_ms=hold, min_speech_ms=minimum, gap_ms=gap, voicing=voicing)
