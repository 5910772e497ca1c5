"""Barge-in that users don't hate: telling a caller talking over the agent from a backchannel,
a cough or a noise burst. No I/O.

One :class:`BargeIn` per caller stream (the mix, or one participant) takes the stream's 20 ms
frames while the agent's audio plays and says what to do with that audio:

- :attr:`Decision.HOLD` when voice has been heard for ``hold_ms``: the agent's audio is held
  at once (the platform stops; nothing is lost: egress keeps what was not heard);
- :attr:`Decision.STOP` when the burst has held voice for ``min_speech_ms`` in all: a real
  barge-in, the agent's audio is dropped and the agent listens;
- :attr:`Decision.RESUME` when the burst ended (``gap_ms`` without voice) short of that: it was
  a backchannel ("mhm", "okay"), a cough, a click; the agent plays on from where it was held.

A frame is *voice* when WebRTC's VAD calls it speech **and** it is periodic: a voiced sound
has a pitch, so its normalised autocorrelation peaks at a lag of one pitch period (60–400 Hz);
a cough, a breath, a door or line noise is aperiodic and peaks low. The VAD alone takes most
noise bursts for speech. Durations count voice frames only, so a long hiss never becomes a
barge-in and a backchannel shorter than ``min_speech_ms`` never interrupts, yet a caller who
says "wait, I have a question" is heard within ``hold_ms`` of their first voiced frame.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import webrtcvad

from callstream.workers.vad import FRAME_MS, VAD_RATE_HZ, ToVadRate

PITCH_HZ = (60.0, 400.0)
MIN_LEVEL = 100.0  # RMS (of 32768) below which a frame is taken as silence whatever its shape


class Decision(enum.Enum):
    HOLD = "hold"
    STOP = "stop"
    RESUME = "resume"


@dataclass(frozen=True, slots=True)
class BargeInConfig:
    """How much voice holds the agent, how much stops it, how long a gap ends a burst."""

    hold_ms: int = 120
    min_speech_ms: int = 500
    gap_ms: int = 400
    voicing: float = 0.5  # normalised autocorrelation a frame's pitch peak must reach
    aggressiveness: int = 3  # webrtcvad's, 0-3

    def __post_init__(self) -> None:
        if not FRAME_MS <= self.hold_ms <= self.min_speech_ms:
            raise ValueError(
                f"barge-in needs {FRAME_MS} ms <= hold_ms <= min_speech_ms, got "
                f"hold_ms={self.hold_ms}, min_speech_ms={self.min_speech_ms}"
            )
        if self.gap_ms < FRAME_MS:
            raise ValueError(f"gap_ms must be at least {FRAME_MS}, got {self.gap_ms}")
        if not 0 < self.voicing < 1:
            raise ValueError(f"voicing must be in (0, 1), got {self.voicing}")


def periodicity(samples: npt.NDArray[np.float64], rate_hz: int) -> float:
    """The peak of the normalised autocorrelation of ``samples`` over pitch-period lags: near 1
    for a voiced sound, low for noise. 0 for silence."""
    x = samples - samples.mean()
    n = x.size
    energy = np.square(x)
    if n == 0 or np.sqrt(energy.mean()) < MIN_LEVEL:
        return 0.0
    lo = int(rate_hz / PITCH_HZ[1])
    hi = min(int(rate_hz / PITCH_HZ[0]), n // 2)
    spectrum = np.fft.rfft(x, 2 * n)
    corr = np.fft.irfft(np.abs(spectrum) ** 2)[lo : hi + 1]
    # Each lag's overlap normalised by the energies of its two parts.
    cumulative = np.concatenate(([0.0], np.cumsum(energy)))
    lags = np.arange(lo, hi + 1)
    head = cumulative[n - lags]  # x[0 : n - lag]
    tail = cumulative[n] - cumulative[lags]  # x[lag : n]
    norm = np.sqrt(head * tail)
    valid = norm > 0
    if not valid.any():
        return 0.0
    return float(np.max(corr[valid] / norm[valid]))


class BargeIn:
    """One caller stream's barge-in detector: :meth:`push` each frame while the agent plays
    (and :meth:`reset` when it stops playing)."""

    def __init__(self, rate_hz: int, config: BargeInConfig | None = None) -> None:
        self.config = config or BargeInConfig()
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self._to_vad_rate = ToVadRate(rate_hz)
        self._previous = np.zeros(VAD_RATE_HZ * FRAME_MS // 1000)
        self.reset()

    def reset(self) -> None:
        """Forget the burst in progress (the agent's audio ended, or was stopped)."""
        self._voiced = 0  # voice frames in the current burst
        self._quiet = 0  # frames since the last voice frame
        self._held = False
        self._burst = False

    @property
    def held(self) -> bool:
        return self._held

    def is_voice(self, pcm: bytes) -> bool:
        """Whether one 20 ms frame at the stream's rate is voice (see the module's text)."""
        frame = self._to_vad_rate(pcm)
        samples = np.frombuffer(frame, dtype="<i2").astype(np.float64)
        window = np.concatenate((self._previous, samples))  # 40 ms: two periods at 60 Hz
        self._previous = samples
        if not self._vad.is_speech(frame, VAD_RATE_HZ):
            return False
        return periodicity(window, VAD_RATE_HZ) >= self.config.voicing

    def push(self, pcm: bytes, *, silent: bool = False) -> Decision | None:
        """One frame of the caller's stream while the agent's audio plays."""
        voice = False if silent else self.is_voice(pcm)
        if silent:
            self._previous = np.zeros_like(self._previous)
        config = self.config
        if voice:
            self._burst = True
            self._voiced += 1
            self._quiet = 0
        elif self._burst:
            self._quiet += 1
            if self._quiet * FRAME_MS >= config.gap_ms:  # the burst is over, short of a barge-in
                was_held = self._held
                self.reset()
                return Decision.RESUME if was_held else None
            return None
        else:
            return None
        voiced_ms = self._voiced * FRAME_MS
        if voiced_ms >= config.min_speech_ms:
            self.reset()
            return Decision.STOP
        if not self._held and voiced_ms >= config.hold_ms:
            self._held = True
            return Decision.HOLD
        return None
