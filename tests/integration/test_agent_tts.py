"""The voice agent's TTS engines speaking for real: Piper (the speech extra) and espeak-ng (the
Debian package; ``./dev test`` installs it). Piper's speech must be understood by PocketSphinx.
Azure needs the service and is not tested here (tests/unit/workers/test_agent_tts.py checks its
configuration)."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from callstream.shared.audio import rms_dbfs
from callstream.shared.entries import InFrame
from callstream.speech import piper_available
from callstream.workers.agent.tts import Synthesizer, make_synthesizer, sentences
from callstream.workers.stt.pocketsphinx_engine import pocketsphinx_factory
from callstream.workers.stt.transcript import TRANSCRIPT
from callstream.workers.transcribe import Transcriber
from tests.helpers import word_error_rate

RATES = (16000, 24000)
# Piper samples noise: its speech differs a little from run to run. These sentences were heard
# by PocketSphinx with a word error rate of 0 (sentence) and at most 0.1 (reply) in 20 runs each.
SENTENCE = "I can help you with your account today."
REFERENCE = "i can help you with your account today"
REPLY = (
    "I can help you with your account today. "
    "I would like to check the balance of my account. Thank you."
)
REPLY_REFERENCE = (
    "i can help you with your account today "
    "i would like to check the balance of my account thank you"
)
MIN_DBFS = -35.0  # speech, not near-silence: Piper is at about -15 dBFS, espeak-ng -23


@pytest.fixture(scope="module", params=["piper", "espeak"])
def synthesizer(request: pytest.FixtureRequest) -> Synthesizer:
    if request.param == "piper":
        assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    else:
        assert shutil.which("espeak-ng"), "espeak-ng is needed (./dev test installs it)"
    engine = make_synthesizer(request.param, {})
    assert engine.name == request.param
    engine.synthesize("Warm up.", 16000)  # Piper loads its voice at first use
    return engine


def heard(pcm: bytes, rate: int) -> str:
    """What PocketSphinx hears in ``pcm`` (with a second of silence either side), as the
    transcribe worker would: its final results joined."""
    audio = bytes(rate * 2) + pcm + bytes(rate * 2)
    frame = rate // 50 * 2
    audio += bytes(-len(audio) % frame)
    frames = [
        (f"{i + 1}-0", InFrame(i, 20 * i, "", 0, False, audio[i * frame : (i + 1) * frame]))
        for i in range(len(audio) // frame)
    ]
    out = Transcriber("offline", rate, pocketsphinx_factory).process(frames, ended=True)
    finals = [e for e in out if e.type == TRANSCRIPT and e.data["resultStatus"] == "Final"]
    return " ".join(str(e.data["text"]) for e in finals)


@pytest.mark.parametrize("rate", RATES)
def test_a_sentence_is_plausible_speech_at_the_call_rate(
    synthesizer: Synthesizer, rate: int
) -> None:
    started = time.perf_counter()
    pcm = synthesizer.synthesize(SENTENCE, rate)
    elapsed = time.perf_counter() - started
    seconds = len(pcm) / 2 / rate
    rtf = elapsed / seconds
    print(
        f"{synthesizer.name} {rate} Hz: {elapsed * 1000:.0f} ms for {seconds:.2f} s, RTF {rtf:.3f}"
    )
    assert len(pcm) % 2 == 0
    assert 0.3 <= seconds <= 5.0, seconds
    assert rms_dbfs(pcm) > MIN_DBFS
    assert elapsed < seconds  # faster than real time, with room to spare on any machine


def test_both_rates_hold_the_same_speech(synthesizer: Synthesizer) -> None:
    low, high = (synthesizer.synthesize(SENTENCE, rate) for rate in RATES)
    assert abs(len(low) / 2 / 16000 - len(high) / 2 / 24000) < 0.1  # same duration
    assert abs(rms_dbfs(low) - rms_dbfs(high)) < 1.5  # same level
    peak_low, peak_high = (
        int(np.abs(np.frombuffer(pcm, "<i2").astype(np.int32)).max()) for pcm in (low, high)
    )
    assert peak_low > 3000
    assert peak_high > 3000


def test_blank_text_is_no_audio(synthesizer: Synthesizer) -> None:
    assert synthesizer.synthesize("  ", 16000) == b""


def test_piper_is_understood() -> None:
    engine = make_synthesizer("piper", {})
    hypothesis = heard(engine.synthesize(SENTENCE, 16000), 16000)
    assert word_error_rate(REFERENCE, hypothesis) <= 0.15, hypothesis


def test_piper_sentence_by_sentence_is_understood() -> None:
    """A reply split with sentences(), each synthesised alone and played one after the other."""
    engine = make_synthesizer("piper", {})
    parts = sentences(REPLY)
    assert len(parts) == 3
    pause = bytes(16000 // 5 * 2)  # 200 ms between sentences
    pcm = b"".join(engine.synthesize(part, 16000) + pause for part in parts)
    hypothesis = heard(pcm, 16000)
    assert word_error_rate(REPLY_REFERENCE, hypothesis) <= 0.25, hypothesis
