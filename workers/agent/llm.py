"""The voice agent's replies from a large language model (``--llm URL``).

Any OpenAI-compatible chat completions endpoint: OpenAI's, a local server (vLLM, llama.cpp,
Ollama: ``http://127.0.0.1:8000/v1/chat/completions``) or an Azure OpenAI deployment
(``https://RES.openai.azure.com/openai/deployments/DEP/chat/completions?api-version=...``).
The conversation so far is the context; the reply is streamed (server-sent events) and
:meth:`ChatLlm.reply` yields it sentence by sentence as soon as each sentence is complete, so the
worker speaks the first sentence while the model still writes the rest.

Settings (:meth:`LlmConfig.from_env`): ``CS_LLM_API_KEY`` (sent as ``Authorization: Bearer``,
or as ``api-key`` to Azure), ``CS_LLM_MODEL`` (Azure ignores it: the deployment is in the URL),
``CS_LLM_SYSTEM_PROMPT``, ``CS_LLM_TIMEOUT_S`` (connecting, and waiting for each piece of the
stream; default 10), ``CS_LLM_MAX_TURNS`` (how many of the latest history entries are sent).

The stream's parsing (:class:`SseParser`, :func:`delta_content`) and the sentence assembly
(:class:`SentenceAssembler`) are pure; only :class:`ChatLlm` does I/O (httpx).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from callstream.shared.errors import CallstreamError, ConfigError
from callstream.workers.agent.tts import sentences

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful, friendly contact-centre agent speaking with a caller on the phone. "
    "Your words are read aloud by a speech synthesizer: answer in one to three short, plain "
    "spoken sentences. No markdown, lists, emojis, links or code. Spell out numbers as they "
    "should be spoken when that helps. If you cannot help, offer to transfer the caller to a "
    "human colleague."
)
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_TURNS = 20
DONE = "[DONE]"
ROLES = frozenset({"user", "assistant"})
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com")
_MAX_ERROR_CHARS = 300
# SSE's line breaks, and only those (str.splitlines also splits at U+2028, legal inside JSON).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class LlmError(CallstreamError):
    """The language model could not answer: unreachable, an HTTP error, a timeout, or a stream
    that is not what the chat completions API sends. ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LlmConfig:
    url: str  # the chat completions endpoint, query (Azure's api-version) included
    model: str | None = None
    api_key: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_history_turns: int = DEFAULT_MAX_TURNS  # history entries (one speaker's turn each)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"--llm {self.url!r}: not an http(s) URL of a chat completions endpoint"
            )
        if self.azure and "api-version=" not in parts.query:
            raise ConfigError(
                f"--llm {self.where}: an Azure OpenAI URL needs its api-version "
                "(...chat/completions?api-version=2024-06-01)"
            )
        if not self.timeout_s > 0:
            raise ConfigError(f"CS_LLM_TIMEOUT_S must be a positive number, got {self.timeout_s}")
        if self.max_history_turns < 0:
            raise ConfigError(f"CS_LLM_MAX_TURNS must be 0 or more, got {self.max_history_turns}")

    @property
    def azure(self) -> bool:
        """An Azure OpenAI resource (it takes its key as ``api-key``)."""
        host = urlsplit(self.url).hostname or ""
        return host.endswith(_AZURE_HOSTS)

    @property
    def where(self) -> str:
        """The endpoint for messages: the URL without its query."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    @classmethod
    def from_env(cls, url: str, env: Mapping[str, str]) -> LlmConfig:
        """The endpoint ``url`` with the ``CS_LLM_*`` settings of ``env``; :class:`ConfigError`
        saying what is wrong."""
        timeout = _number(env, "CS_LLM_TIMEOUT_S", DEFAULT_TIMEOUT_S, float)
        turns = _number(env, "CS_LLM_MAX_TURNS", DEFAULT_MAX_TURNS, int)
        return cls(
            url=url.strip(),
            model=env.get("CS_LLM_MODEL", "").strip() or None,
            api_key=env.get("CS_LLM_API_KEY", "").strip() or None,
            system_prompt=env.get("CS_LLM_SYSTEM_PROMPT", "").strip() or DEFAULT_SYSTEM_PROMPT,
            timeout_s=float(timeout),
            max_history_turns=int(turns),
        )


def _number(
    env: Mapping[str, str], name: str, default: float, kind: type[float] | type[int]
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


# ------------------------------------------------------------------------------- the request


def request_headers(config: LlmConfig) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Accept-Encoding": "identity",  # a compressed stream could be held back to compress
    }
    if config.api_key:
        if config.azure:
            headers["api-key"] = config.api_key
        else:
            headers["Authorization"] = f"Bearer {config.api_key}"
    return headers


def request_body(
    config: LlmConfig, history: Sequence[tuple[str, str]], utterance: str
) -> dict[str, Any]:
    """The chat request: the system prompt, the latest ``max_history_turns`` entries of
    ``history`` (``(role, text)``, role ``"user"`` for the caller or ``"assistant"`` for the
    agent), then the caller's ``utterance``."""
    recent = history[-config.max_history_turns :] if config.max_history_turns else ()
    messages = [{"role": "system", "content": config.system_prompt}]
    for role, text in recent:
        if role not in ROLES:
            raise ValueError(f"history role must be 'user' or 'assistant', got {role!r}")
        messages.append({"role": role, "content": text})
    messages.append({"role": "user", "content": utterance})
    body: dict[str, Any] = {"messages": messages, "stream": True}
    if config.model:
        body["model"] = config.model
    return body


# ------------------------------------------------------------------------------- the stream


class SseParser:
    """Server-sent events, incrementally: bytes in, each event's ``data`` out (its ``data:``
    lines joined by line breaks) once the blank line that ends the event has arrived. Lines may
    end in CRLF, LF or CR; comments and other fields are skipped; UTF-8 may split anywhere."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # an incomplete line
        self._after_cr = False  # the last chunk ended in CR
        self._data: list[str] = []  # the current event's data lines

    def feed(self, chunk: bytes) -> list[str]:
        text = self._decoder.decode(chunk)
        if not text:  # nothing, or the first bytes of a character
            return []
        if self._after_cr:  # a CR ended the last text: a LF now is the rest of its CRLF
            text = text.removeprefix("\n")
        text = self._pending + text
        self._after_cr = text.endswith("\r")
        *lines, self._pending = _LINE_BREAK.split(text)
        events: list[str] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data"):
                field, _, value = line.partition(":")
                if field == "data":
                    self._data.append(value.removeprefix(" "))
        return events


def delta_content(data: str) -> str:
    """The text of one chat-completion chunk (``choices[0].delta.content``; ``""`` for chunks
    without any, such as the role's, or Azure's content-filter results). :class:`LlmError` for
    data that is not such a chunk, or that reports an error."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise LlmError(f"malformed stream: not JSON: {data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise LlmError(f"malformed stream: not a chat completion chunk: {data[:80]!r}")
    if "error" in chunk:
        raise LlmError(f"the model failed mid-stream: {_error_message(chunk)}")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise LlmError(f"malformed stream: a chunk without choices: {data[:80]!r}")
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise LlmError(f"malformed stream: a choice without a delta: {data[:80]!r}")
    content = delta.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise LlmError(f"malformed stream: content is not text: {data[:80]!r}")
    return content


class SentenceAssembler:
    """Streamed text in, complete sentences out, split exactly as :func:`~.tts.sentences`
    splits a whole text. A sentence is complete once the break after it has arrived (``"Hi. "``
    yes; ``"Hi."`` not yet: ``"Hi.5"`` may follow; ``"Call Dr. "`` not: a title)."""

    # Appended to the text to split: whatever part holds it is the unfinished tail; every part
    # before it is followed by a break, and so complete. Not white space, not punctuation.
    _PROBE = "\ue000"

    def __init__(self) -> None:
        self._tail = ""

    def feed(self, text: str) -> list[str]:
        parts = sentences(self._tail + text + self._PROBE)
        self._tail = parts[-1][: -len(self._PROBE)]
        return parts[:-1]

    def flush(self) -> list[str]:
        """What remains at the end of the stream, as sentences."""
        rest, self._tail = self._tail, ""
        return sentences(rest)


def _error_message(payload: Any) -> str:
    """The ``error.message`` of an OpenAI/Azure error body, or the body itself."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_ERROR_CHARS]
        if isinstance(error, str):
            return error[:_MAX_ERROR_CHARS]
    return json.dumps(payload)[:_MAX_ERROR_CHARS]


def _error_text(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        return _error_message(json.loads(text))
    except ValueError:
        return text[:_MAX_ERROR_CHARS] or "(no body)"


# ------------------------------------------------------------------------------- the client


class ChatLlm:
    """A chat completions endpoint, streamed. One instance per replica (its connections are
    kept for the next reply); :meth:`aclose` at the end."""

    def __init__(self, config: LlmConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(config.timeout_s))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def reply(self, history: Sequence[tuple[str, str]], utterance: str) -> AsyncIterator[str]:
        """The model's answer to ``utterance`` after ``history`` (``(role, text)`` entries,
        oldest first), sentence by sentence, each as soon as it is complete.

        Raises :class:`LlmError` if the endpoint cannot be reached, answers with an HTTP status
        other than 200, stops answering for ``timeout_s``, or sends a malformed or truncated
        stream (possibly after some sentences were yielded)."""
        config = self.config
        where = config.where
        body = request_body(config, history, utterance)
        try:
            async with self._client.stream(
                "POST", config.url, json=body, headers=request_headers(config)
            ) as response:
                if response.status_code != 200:
                    detail = _error_text(await response.aread())
                    raise LlmError(
                        f"LLM {where}: HTTP {response.status_code}: {detail}",
                        status=response.status_code,
                    )
                parser = SseParser()
                assembler = SentenceAssembler()
                done = False
                async for chunk in response.aiter_bytes():
                    for data in parser.feed(chunk):
                        if data.strip() == DONE:
                            done = True
                            break
                        try:
                            content = delta_content(data)
                        except LlmError as exc:
                            raise LlmError(f"LLM {where}: {exc}") from None
                        for sentence in assembler.feed(content):
                            yield sentence
                    if done:
                        break
                if not done:
                    raise LlmError(f"LLM {where}: the stream ended before [DONE]")
                for sentence in assembler.flush():
                    yield sentence
        except httpx.TimeoutException:
            raise LlmError(f"LLM {where}: no answer within {config.timeout_s:g} s") from None
        except httpx.ConnectError as exc:
            raise LlmError(f"LLM {where}: cannot connect: {exc}") from None
        except httpx.RemoteProtocolError as exc:
            raise LlmError(f"LLM {where}: the connection broke off: {exc}") from None
        except httpx.HTTPError as exc:
            raise LlmError(f"LLM {where}: {type(exc).__name__}: {exc}") from None
