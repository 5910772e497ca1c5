"""Azure Speech (azure-cognitiveservices-speech): continuous recognition from a push stream.

One :class:`speechsdk.SpeechRecognizer` per audio stream, started at its first utterance and
kept for the whole call: the speech the voice activity detector passes (with pre-roll and
hangover) is written to a push stream of 16-bit mono PCM at the stream's rate; Azure segments
it itself. ``recognizing`` becomes an intermediate result, ``recognized`` a final one, with word
timings from the detailed output. The SDK answers on its own threads; results are queued and
handed over at the next :meth:`AzureRecognizer.feed`, :meth:`~AzureRecognizer.stop` or
:meth:`~AzureRecognizer.close`. Azure's offsets count the audio pushed, which skips the
silences between utterances; they are mapped back to the stream's time.

Configuration (environment): ``CS_AZURE_SPEECH_KEY``, and ``CS_AZURE_SPEECH_REGION`` or
``CS_AZURE_SPEECH_ENDPOINT``; ``CS_AZURE_SPEECH_LANGUAGE`` (default ``en-US``).
:func:`check_service` recognises a second of silence at startup, so missing or refused
credentials are one clear error when the worker starts, not a failure per call.
"""

from __future__ import annotations

import bisect
import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import azure.cognitiveservices.speech as speechsdk

from callstream.shared.errors import ConfigError
from callstream.workers.stt.engine import RecognizerFailed, Result, Word

log = logging.getLogger(__name__)

TICKS_PER_MS = 10_000
CLOSE_TIMEOUT_S = 10.0  # how long close() waits for the last finals
CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class AzureSpeechSettings:
    key: str
    region: str | None
    endpoint: str | None
    language: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AzureSpeechSettings:
        key = env.get("CS_AZURE_SPEECH_KEY", "").strip()
        region = env.get("CS_AZURE_SPEECH_REGION", "").strip() or None
        endpoint = env.get("CS_AZURE_SPEECH_ENDPOINT", "").strip() or None
        missing = []
        if not key:
            missing.append("CS_AZURE_SPEECH_KEY")
        if region is None and endpoint is None:
            missing.append("CS_AZURE_SPEECH_REGION (or CS_AZURE_SPEECH_ENDPOINT)")
        if missing:
            raise ConfigError(f"the azure engine needs {' and '.join(missing)} in the environment")
        return cls(key, region, endpoint, env.get("CS_AZURE_SPEECH_LANGUAGE", "en-US").strip())

    def speech_config(self) -> speechsdk.SpeechConfig:
        if self.endpoint is not None:
            config = speechsdk.SpeechConfig(subscription=self.key, endpoint=self.endpoint)
        else:
            config = speechsdk.SpeechConfig(subscription=self.key, region=self.region)
        config.speech_recognition_language = self.language
        config.output_format = speechsdk.OutputFormat.Detailed
        config.request_word_level_timestamps()
        return config


def result_from_json(
    text_json: str, final: bool, to_stream_ms: Callable[[int], int]
) -> Result | None:
    """A recognition result (the SDK's ``result.json``, detailed format) as a :class:`Result`;
    ``to_stream_ms`` maps Azure's offsets (ms of audio pushed) to the stream's time."""
    data = json.loads(text_json)
    offset_ms = int(data.get("Offset", 0)) // TICKS_PER_MS
    duration_ms = int(data.get("Duration", 0)) // TICKS_PER_MS
    best = (data.get("NBest") or [{}])[0]
    text = data.get("DisplayText") or best.get("Display") or data.get("Text") or ""
    if not text:
        return None
    words = tuple(
        Word(
            str(word.get("Word", "")),
            to_stream_ms(int(word.get("Offset", 0)) // TICKS_PER_MS),
            int(word.get("Duration", 0)) // TICKS_PER_MS,
        )
        for word in best.get("Words") or ()
    )
    start = to_stream_ms(offset_ms)
    return Result(
        text,
        final,
        start,
        max(0, to_stream_ms(offset_ms + duration_ms) - start) if duration_ms else 0,
        float(best.get("Confidence", 0.0)),
        words,
    )


class _Timeline:
    """Maps time in the pushed audio to stream time: each utterance's audio was pushed
    contiguously, starting at a known point of both."""

    def __init__(self) -> None:
        self._pushed: list[int] = []  # ms of pushed audio where each utterance starts
        self._stream: list[int] = []  # and where that is in the stream
        self.pushed_ms = 0

    def utterance(self, stream_ms: int) -> None:
        self._pushed.append(self.pushed_ms)
        self._stream.append(stream_ms)

    def to_stream_ms(self, pushed_ms: int) -> int:
        i = bisect.bisect_right(self._pushed, pushed_ms) - 1
        if i < 0:
            return pushed_ms
        return self._stream[i] + pushed_ms - self._pushed[i]


class AzureRecognizer:
    def __init__(self, rate_hz: int, settings: AzureSpeechSettings) -> None:
        self._rate_hz = rate_hz
        self._settings = settings
        self._results: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
        self._timeline = _Timeline()
        self._stream: speechsdk.audio.PushAudioInputStream | None = None
        self._recognizer: speechsdk.SpeechRecognizer | None = None
        self._stopped = threading.Event()
        self._error: str | None = None  # why Azure cancelled the session, from its thread

    def start(self, audio_offset_ms: int, speech_offset_ms: int) -> None:
        if self._recognizer is None:
            self._open()
        self._timeline.utterance(audio_offset_ms)

    def feed(self, pcm: bytes) -> list[Result]:
        assert self._stream is not None, "feed() before start()"
        self._check()
        self._stream.write(pcm)
        self._timeline.pushed_ms += len(pcm) * 1000 // (2 * self._rate_hz)
        return self._drain()

    def stop(self) -> list[Result]:
        self._check()
        return self._drain()  # Azure finalises on the hangover's silence; finals come later

    def close(self) -> list[Result]:
        if self._recognizer is None or self._stream is None:
            return []
        self._stream.close()  # end of audio: Azure finalises and stops the session
        if not self._stopped.wait(CLOSE_TIMEOUT_S):
            log.warning("azure: no end of session within %.0f s", CLOSE_TIMEOUT_S)
        self._recognizer.stop_continuous_recognition_async().get()
        self._recognizer = None
        self._check()
        return self._drain()

    def _open(self) -> None:
        audio_format = speechsdk.audio.AudioStreamFormat(
            samples_per_second=self._rate_hz, bits_per_sample=16, channels=1
        )
        self._stream = speechsdk.audio.PushAudioInputStream(stream_format=audio_format)
        self._recognizer = speechsdk.SpeechRecognizer(
            speech_config=self._settings.speech_config(),
            audio_config=speechsdk.audio.AudioConfig(stream=self._stream),
        )
        results = self._results
        self._recognizer.recognizing.connect(lambda evt: results.put((evt.result.json, False)))
        self._recognizer.recognized.connect(
            lambda evt: (
                results.put((evt.result.json, True))
                if evt.result.reason == speechsdk.ResultReason.RecognizedSpeech
                else None
            )
        )
        self._recognizer.canceled.connect(self._on_canceled)
        self._recognizer.session_stopped.connect(lambda evt: self._stopped.set())
        self._recognizer.start_continuous_recognition_async().get()

    def _on_canceled(self, evt: Any) -> None:
        details = evt.cancellation_details
        if details.reason == speechsdk.CancellationReason.Error:
            log.error("azure: recognition failed: %s", details.error_details)
            self._error = str(details.error_details) or "cancelled with an error"
        self._stopped.set()

    def _check(self) -> None:
        """A session Azure cancelled hears nothing more: say so, rather than drop the rest
        of the call's speech in silence."""
        if self._error is not None:
            raise RecognizerFailed(f"Azure Speech cancelled the session: {self._error}")

    def _drain(self) -> list[Result]:
        out: list[Result] = []
        while True:
            try:
                text_json, final = self._results.get_nowait()
            except queue.Empty:
                return out
            result = result_from_json(text_json, final, self._timeline.to_stream_ms)
            if result is not None:
                out.append(result)


def azure_factory(settings: AzureSpeechSettings) -> Callable[[int], AzureRecognizer]:
    def factory(rate_hz: int) -> AzureRecognizer:
        return AzureRecognizer(rate_hz, settings)

    return factory


def check_service(settings: AzureSpeechSettings, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Recognise one second of silence; raise :class:`ConfigError` with Azure's reason when
    the service refuses the credentials or cannot be reached."""
    audio_format = speechsdk.audio.AudioStreamFormat(
        samples_per_second=16000, bits_per_sample=16, channels=1
    )
    stream = speechsdk.audio.PushAudioInputStream(stream_format=audio_format)
    recognizer = speechsdk.SpeechRecognizer(
        speech_config=settings.speech_config(),
        audio_config=speechsdk.audio.AudioConfig(stream=stream),
    )
    done = threading.Event()
    errors: list[str] = []

    def canceled(evt: Any) -> None:
        details = evt.cancellation_details
        if details.reason == speechsdk.CancellationReason.Error:
            errors.append(str(details.error_details).splitlines()[0])
        done.set()

    recognizer.canceled.connect(canceled)
    recognizer.session_stopped.connect(lambda evt: done.set())
    recognizer.start_continuous_recognition_async().get()
    stream.write(bytes(32000))
    stream.close()
    finished = done.wait(timeout_s)
    recognizer.stop_continuous_recognition_async().get()
    where = settings.endpoint or f"region {settings.region}"
    if errors:
        raise ConfigError(f"Azure Speech ({where}) refused to recognise: {errors[0]}")
    if not finished:
        raise ConfigError(f"Azure Speech ({where}) did not answer within {timeout_s:.0f} s")
