"""Spoken audio for the demo: flite (Debian package ``flite``) reads text aloud, offline.

flite is CMU's small synthesiser; its ``slt`` and ``rms`` voices are recognised almost word
for word by PocketSphinx's US English model (CMU's too), where espeak-ng's formant voice is
mostly misheard. ``./dev`` installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

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
