"""Load any PCM WAV as 16-bit mono at a given rate (numpy + soxr), and write PCM16 WAVs (mono,
or stereo from two tracks)."""

from __future__ import annotations

import wave

import numpy as np
import numpy.typing as npt
import soxr

from callstream.shared.errors import ConfigError


def _samples(raw: bytes, width: int) -> npt.NDArray[np.float64]:
    """Integer PCM of ``width`` bytes per sample to floats in [-1, 1)."""
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = np.where(value & 0x800000, value - 0x1000000, value)
        return value.astype(np.float64) / 8388608.0
    if width == 4:
        return np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0
    raise ConfigError(f"unsupported WAV sample width: {width * 8} bits")


def load_wav(path: str, rate_hz: int) -> bytes:
    """PCM16 mono at ``rate_hz`` from a PCM WAV of any rate, width and channel count."""
    try:
        with wave.open(path, "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            source_rate = wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise ConfigError(f"cannot read {path} as a PCM WAV file: {exc}") from None
    samples = _samples(raw, width)
    if channels > 1:
        samples = samples[: samples.size - samples.size % channels].reshape(-1, channels).mean(1)
    if source_rate != rate_hz and samples.size:
        samples = soxr.resample(samples, source_rate, rate_hz, quality="HQ")
    return (np.clip(np.round(samples * 32768.0), -32768, 32767)).astype("<i2").tobytes()


def write_wav(path: str, pcm: bytes, rate_hz: int) -> None:
    """Write PCM16 mono at ``rate_hz`` as a WAV file."""
    with wave.open(path, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm)


def write_stereo_wav(path: str, left: bytes, right: bytes, rate_hz: int) -> None:
    """Write two PCM16 mono tracks at ``rate_hz`` as one stereo WAV file, ``left`` on the left
    channel and ``right`` on the right; the shorter one is padded with silence at its end."""
    if len(left) % 2 or len(right) % 2:
        raise ValueError("PCM16 tracks must have an even number of bytes")
    length = max(len(left), len(right)) // 2
    frames = np.zeros((length, 2), dtype="<i2")
    for channel, pcm in enumerate((left, right)):
        samples = np.frombuffer(pcm, dtype="<i2")
        frames[: samples.size, channel] = samples
    with wave.open(path, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(frames.tobytes())
