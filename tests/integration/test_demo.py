"""The README's main command: ``callstream demo``, run as the user runs it (a process).

Piper speaks the conversation (``./dev`` installs the speech extra); the demo must echo the
speech back byte for byte, transcribe every utterance (attributed to its speaker when
unmixed) and publish insights and a summary. Its transcripts are also compared with what was
said: Piper's voice is recognised almost word for word by PocketSphinx, so a large error rate
means the pipeline lost or mangled audio.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from callstream.shared.settings import Settings
from callstream.speech import piper_available
from tests.helpers import word_error_rate

# PocketSphinx mishears a few of Piper's words, more at 16 kHz than at 24 ("my card number" as
# "my current members": 0.23 in one run); audio lost or mangled on the way costs far more.
MAX_WER = 0.3


@pytest.mark.parametrize(("mode", "rate"), [("unmixed", 16000), ("mixed", 24000)])
async def test_the_demo_echoes_and_transcribes_the_conversation(
    settings: Settings, tmp_path: Path, mode: str, rate: int
) -> None:
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
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
    async with asyncio.timeout(120):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, (stdout + stderr).decode()[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["played_equals_sent"]
    assert report["speech_frames_played"] > 0
    said: dict[str, str] = {}
    for line in report["said"]:
        said[line["participant"]] = f"{said.get(line['participant'], '')} {line['text']}".strip()
    assert set(said) == {"caller", "agent"}
    heard: dict[str, list[str]] = {}
    for transcript in report["transcripts"]:
        heard.setdefault(transcript["participant"], []).append(transcript["text"])
    if mode == "unmixed":  # each utterance attributed to its speaker
        assert set(heard) == set(said)
        for name, text in said.items():
            assert word_error_rate(text, " ".join(heard[name])) <= MAX_WER, (name, heard[name])
    else:
        assert set(heard) == {"call"}
        reference = " ".join(s["text"] for s in report["said"])
        assert word_error_rate(reference, " ".join(heard["call"])) <= MAX_WER, heard
    assert b"heard    " in stdout  # transcripts printed as they arrive
    # Insights on the utterances, and the summary at the end.
    insights = report["insights"]
    assert {"nlp.sentiment", "nlp.key_phrases", "nlp.intent", "nlp.pii"} <= {
        i["type"] for i in insights
    }
    # The card number read out (its first digit misheard it is still a run of digits).
    assert {"card_number", "digits"} & {
        e["type"] for i in insights if i["type"] == "nlp.pii" for e in i["entities"]
    }
    summary = report["summary"]
    assert summary["utterances"] == len(report["transcripts"])
    assert "cancel_subscription" in [i["name"] for i in summary["intents"]]
    assert summary["dtmf"] == "42#"
    assert b"Summary (nlp worker)" in stdout
    for wav in ("input.wav", "recording.wav"):
        assert (tmp_path / wav).stat().st_size > 44
