"""The README's main command: ``callstream demo``, run as the user runs it (a process).

A caller (flite) talks with the voice agent (Piper) through the sample dialog flow; ``./dev``
installs both. The demo must show the agent greeting and answering, transcribe every line the
caller said (compared with the script: flite's ``slt`` voice is heard almost word for word by
PocketSphinx, so a large error rate means the pipeline lost or mangled audio), publish insights
and a summary, and write the call as a stereo WAV: the caller's track on the left, what was
played into the call on the right — where the agent is heard (transcribed again here).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from callstream.shared.settings import Settings
from callstream.speech import flite_available, piper_available, speak
from callstream.workers.agent.dialog import Dialog, load_flow
from tests.helpers import word_error_rate
from tests.integration.test_transcribe import finals, offline

# The caller's three lines (19 words) were heard word for word in trials; this allows a few
# misheard words (a whole line lost costs 0.2 to 0.4).
MAX_WER = 0.3


def stereo(path: Path, rate: int) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """The left and right channels of a PCM16 stereo WAV at ``rate``."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, rate)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames[:, 0], frames[:, 1]


def caller_track(report: dict[str, Any], rate: int, samples: int) -> npt.NDArray[np.int16]:
    """The caller's track rebuilt from the report: each line said by flite at its time."""
    track = np.zeros(samples, dtype="<i2")
    for line in report["said"]:
        pcm = np.frombuffer(speak(line["text"], rate, voice="slt"), dtype="<i2")
        start = round(line["at_s"] * rate)
        track[start : start + pcm.size] = pcm
    return track


def offline_dialog(report: dict[str, Any]) -> list[str]:
    """The sample flow's turns for the caller's lines and keys, in the order of the call."""
    dialog = Dialog(load_flow(None))
    state: dict[str, Any] = {}
    turns = [dialog.greet(state).text]
    lines = sorted(report["said"] + report["keyed"], key=lambda line: line["at_s"])
    for line in lines:
        if "text" in line:
            replies = [dialog.on_utterance(state, line["text"])]
        else:
            replies = [dialog.on_dtmf(state, tone) for tone in line["keys"]]
        turns += [reply.text for reply in replies if reply is not None]
    return turns


def heard_words(pcm: bytes, rate: int) -> set[str]:
    return {w for e in finals(offline(pcm, rate)) for w in str(e.data["text"]).split()}


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("mode", "rate"), [("unmixed", 16000), ("mixed", 24000)])
async def test_the_caller_talks_with_the_agent_and_the_call_is_written_in_stereo(
    settings: Settings, tmp_path: Path, mode: str, rate: int
) -> None:
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    assert flite_available(), "flite is needed (./dev installs it)"
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callstream",
        "--log-level",
        "WARNING",
        "demo",
        "--mode",
        mode,
        "--rate",
        str(rate),
        "--out",
        str(tmp_path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(150):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, (stdout + stderr).decode()[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["voices"] == {"caller": "flite slt", "agent": "piper"}
    assert report["close_code"] == 1000

    # The agent greeted, then answered the caller as the sample flow does.
    expected = offline_dialog(report)
    assert report["expected_turns"] == expected
    assert len(expected) == 5  # greeting, account number?, read-back, answer, goodbye
    turns = [turn["text"] for turn in report["agent_turns"]]
    assert [turn["turn"] for turn in report["agent_turns"]] == list(range(1, len(turns) + 1))
    assert turns[0] == load_flow(None).greeting
    assert set(turns[1:]) & set(expected[1:]), turns
    assert b"agent    Hello, thanks for calling" in stdout  # turns printed as they come

    # The caller's lines were transcribed (attributed to the caller when unmixed).
    said = " ".join(line["text"] for line in report["said"])
    heard = " ".join(t["text"] for t in report["transcripts"])
    assert {t["participant"] for t in report["transcripts"]} == (
        {"caller"} if mode == "unmixed" else {"call"}
    )
    assert word_error_rate(said, heard) <= MAX_WER, heard
    assert b"heard    " in stdout
    assert {"nlp.sentiment", "nlp.key_phrases", "nlp.intent"} <= {
        i["type"] for i in report["insights"]
    }
    summary = report["summary"]
    assert summary["utterances"] == len(report["transcripts"])
    assert summary["dtmf"] == "41123456#"
    assert b"Summary (nlp worker)" in stdout

    # conversation.wav: the caller's track on the left, the call's recording on the right.
    left, right = stereo(tmp_path / "conversation.wav", rate)
    assert np.array_equal(left, await asyncio.to_thread(caller_track, report, rate, left.size))
    recorded = round(report["recording"]["seconds"] * rate)
    assert hashlib.sha256(right[:recorded].tobytes()).hexdigest() == report["recording"]["sha256"]
    assert not right[recorded:].any()  # padding
    assert np.abs(right).max() > 3000  # the agent's voice, not silence
    assert not np.array_equal(left, right)
    # The caller heard the agent: its greeting and answers are in the right channel.
    words = await asyncio.to_thread(heard_words, right.tobytes(), rate)
    assert "help" in words, words
    assert len(words & {"thanks", "calling", "bill", "account", "number", "anything"}) >= 3, words
