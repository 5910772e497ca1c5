"""Audio format model and PCM helpers (pure, numpy; no I/O).

All PCM in callstream is 16-bit signed little-endian mono. Frames are 20 ms long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

FRAME_MS = 20
FRAMES_PER_SECOND = 1000 // FRAME_MS
SAMPLE_WIDTH_BYTES = 2
SUPPORTED_RATES_HZ: tuple[int, ...] = (16000, 24000)

Mode = Literal["mixed", "unmixed"]

Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A call's audio format: PCM16 mono at ``rate_hz`` in frames of ``FRAME_MS``."""

    rate_hz: int

    @property
    def samples_per_frame(self) -> int:
        return self.rate_hz * FRAME_MS // 1000

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms frame: 640 at 16 kHz, 960 at 24 kHz."""
        return self.samples_per_frame * SAMPLE_WIDTH_BYTES

    @property
    def bytes_per_second(self) -> int:
        return self.rate_hz * SAMPLE_WIDTH_BYTES

    def duration_ms(self, n_bytes: int) -> float:
        """Playing time of ``n_bytes`` of PCM, in milliseconds."""
        return n_bytes * 1000.0 / self.bytes_per_second


def frame_bytes_for(rate_hz: int) -> int:
    """Bytes per 20 ms frame of PCM16 mono at ``rate_hz``."""
    return rate_hz * FRAME_MS // 1000 * SAMPLE_WIDTH_BYTES


def as_int16(pcm: bytes) -> Int16Array:
    """View little-endian PCM16 bytes as an int16 array (no copy)."""
    return np.frombuffer(pcm, dtype="<i2")


def rms_dbfs(pcm: bytes) -> float:
    """Root-mean-square level of PCM16 in dBFS (-inf for digital silence or empty input)."""
    samples = as_int16(pcm)
    if samples.size == 0:
        return float("-inf")
    mean_square = float(np.mean(np.square(samples, dtype=np.float64)))
    if mean_square == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(mean_square / (32768.0**2)))


def is_silent(pcm: bytes, threshold_dbfs: float = -50.0) -> bool:
    """True when the PCM's RMS level is below ``threshold_dbfs``."""
    return rms_dbfs(pcm) < threshold_dbfs


def mix(tracks: list[bytes]) -> bytes:
    """Sum equal-length PCM16 tracks, saturating at the int16 range instead of wrapping."""
    if not tracks:
        return b""
    length = len(tracks[0])
    if any(len(t) != length for t in tracks):
        raise ValueError(f"tracks must have equal length, got {[len(t) for t in tracks]}")
    acc = np.zeros(length // SAMPLE_WIDTH_BYTES, dtype=np.int32)
    for track in tracks:
        acc += as_int16(track)
    np.clip(acc, -32768, 32767, out=acc)
    return acc.astype("<i2").tobytes()


def chunk(pcm: bytes, size: int, *, pad: bool = True) -> list[bytes]:
    """Split ``pcm`` into ``size``-byte pieces; the tail is zero-padded (dropped if not ``pad``)."""
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    pieces = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    if pieces and len(pieces[-1]) < size:
        if pad:
            pieces[-1] = pieces[-1] + bytes(size - len(pieces[-1]))
        else:
            pieces.pop()
    return pieces
