"""The Azure engine's configuration and result mapping (no service, no network)."""

from __future__ import annotations

import json

import pytest

from callstream.shared.errors import ConfigError
from callstream.workers.stt.azure_engine import AzureSpeechSettings, _Timeline, result_from_json
from callstream.workers.stt.engine import Word

# The detailed format of a `recognized` result, as Azure documents it.
RECOGNIZED = {
    "Id": "1b3c",
    "RecognitionStatus": "Success",
    "Offset": 18_000_000,
    "Duration": 12_000_000,
    "DisplayText": "Transfer me to billing.",
    "NBest": [
        {
            "Confidence": 0.93,
            "Lexical": "transfer me to billing",
            "Display": "Transfer me to billing.",
            "Words": [
                {"Word": "transfer", "Offset": 18_000_000, "Duration": 4_000_000},
                {"Word": "me", "Offset": 22_000_000, "Duration": 1_500_000},
                {"Word": "to", "Offset": 23_500_000, "Duration": 1_500_000},
                {"Word": "billing", "Offset": 25_000_000, "Duration": 5_000_000},
            ],
        }
    ],
}
RECOGNIZING = {"Id": "1b3c", "Text": "transfer me", "Offset": 18_000_000, "Duration": 5_500_000}


def test_settings_name_every_missing_variable() -> None:
    with pytest.raises(ConfigError, match=r"CS_AZURE_SPEECH_KEY and CS_AZURE_SPEECH_REGION"):
        AzureSpeechSettings.from_env({})
    with pytest.raises(ConfigError, match=r"needs CS_AZURE_SPEECH_REGION \(or"):
        AzureSpeechSettings.from_env({"CS_AZURE_SPEECH_KEY": "k"})
    settings = AzureSpeechSettings.from_env(
        {"CS_AZURE_SPEECH_KEY": "k", "CS_AZURE_SPEECH_REGION": "westeurope"}
    )
    assert (settings.region, settings.endpoint, settings.language) == (
        "westeurope",
        None,
        "en-US",
    )


def test_a_final_result_maps_to_stream_time_with_words() -> None:
    timeline = _Timeline()
    timeline.utterance(5000)  # the first utterance's audio starts 5 s into the stream
    timeline.pushed_ms = 4000
    result = result_from_json(json.dumps(RECOGNIZED), True, timeline.to_stream_ms)
    assert result is not None
    assert (result.text, result.final, result.confidence) == ("Transfer me to billing.", True, 0.93)
    assert (result.offset_ms, result.duration_ms) == (5000 + 1800, 1200)
    assert result.words[0] == Word("transfer", 6800, 400)
    assert result.words[-1] == Word("billing", 7500, 500)


def test_an_intermediate_result_has_text_and_no_words() -> None:
    result = result_from_json(json.dumps(RECOGNIZING), False, lambda ms: ms)
    assert result is not None
    assert (result.text, result.final, result.offset_ms, result.words) == (
        "transfer me",
        False,
        1800,
        (),
    )


def test_an_empty_result_is_none() -> None:
    assert result_from_json(json.dumps({"Offset": 0, "Duration": 0}), True, lambda ms: ms) is None


def test_the_timeline_skips_the_silence_between_utterances() -> None:
    timeline = _Timeline()
    timeline.utterance(1000)
    timeline.pushed_ms = 2000  # 2 s of the first utterance pushed
    timeline.utterance(9000)  # the next starts at 9 s in the stream
    assert timeline.to_stream_ms(500) == 1500
    assert timeline.to_stream_ms(1999) == 2999
    assert timeline.to_stream_ms(2000) == 9000
    assert timeline.to_stream_ms(2600) == 9600
