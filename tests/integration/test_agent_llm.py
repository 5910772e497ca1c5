"""The voice agent's LLM client against a local stand-in for an OpenAI-compatible chat
completions endpoint, over real sockets: the stand-in (asyncio's own server, HTTP/1.1) checks
the request and streams its answer as the API does (server-sent events in chunked transfer
encoding), cut mid-word, mid-sentence and mid-line, and holds the rest of its stream until the
test lets it go: so the test shows the first sentence arrives while the rest is not yet sent."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from callstream.workers.agent.llm import DEFAULT_SYSTEM_PROMPT, ChatLlm, LlmConfig, LlmError
from tests.helpers import free_port

PATH = "/v1/chat/completions"
HISTORY = [("assistant", "Thanks for calling. How can I help?"), ("user", "I ordered a lamp.")]
UTTERANCE = "Where is my order?"
CLOSE = "close"  # in a script: the stand-in drops the connection there


def sse(*deltas: str, done: bool = True) -> bytes:
    """The stream the API sends for ``deltas``: a role chunk, Azure's empty-choices chunk, one
    chunk per delta, a finish chunk, and ``[DONE]``."""
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [], "prompt_filter_results": []},
    ]
    chunks += [{"choices": [{"index": 0, "delta": {"content": d}}]} for d in deltas]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    out = b"".join(b"data: " + json.dumps({"id": "c1", **c}).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class StandIn:
    """One HTTP/1.1 chat completions endpoint on 127.0.0.1: each request is answered with
    ``status`` and ``error`` (a JSON body), or with 200 and ``script``: byte pieces, each sent as
    an HTTP chunk, :class:`asyncio.Event`s it waits for, and :data:`CLOSE`."""

    script: Sequence[bytes | asyncio.Event | str] = ()
    status: int = 200
    error: dict[str, Any] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    pieces_sent: int = 0
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    async def __aenter__(self) -> StandIn:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            start, *lines = head.strip().split("\r\n")
            method, target, _ = start.split(" ")
            headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
            body = await reader.readexactly(int(headers["content-length"]))
            self.requests.append(Request(method, target, headers, json.loads(body)))
            if self.status != 200:
                payload = json.dumps(self.error).encode()
                writer.write(
                    f"HTTP/1.1 {self.status} Error\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            await writer.drain()
            for step in self.script:
                if isinstance(step, asyncio.Event):
                    await step.wait()
                elif step == CLOSE:
                    return
                elif isinstance(step, bytes):
                    writer.write(b"%x\r\n%s\r\n" % (len(step), step))
                    await writer.drain()
                    self.pieces_sent += 1
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()
            self._tasks.discard(task)


async def collect(stream: AsyncIterator[str], into: list[str] | None = None) -> list[str]:
    """Every sentence of ``stream``, into ``into`` as they come (kept if the stream fails)."""
    got = [] if into is None else into
    async for sentence in stream:
        got.append(sentence)
    return got


def pieces(data: bytes, *cuts: int) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


async def test_first_sentence_before_the_rest_is_sent() -> None:
    whole = sse(
        "Hel",
        "lo! I can he",
        "lp with th",
        "at. Your ord",
        "er ship",
        "ped yest",
        "erday. It arri",
        "ves Mon",
        "day.",
    )
    hold = whole.index(b'"er ship"') - 12  # mid-line: the event of "er ship" is incomplete
    first, rest = whole[:hold], whole[hold:]
    release = asyncio.Event()
    script: list[bytes | asyncio.Event | str] = [
        *pieces(first, 5, 40, 41, 150),
        release,
        *pieces(rest, 3, 60),
    ]
    async with StandIn(script) as server:
        config = LlmConfig.from_env(
            server.url, {"CS_LLM_API_KEY": "sk-local", "CS_LLM_MODEL": "stand-in"}
        )
        llm = ChatLlm(config)
        try:
            stream = llm.reply(HISTORY, UTTERANCE)
            # (a bound only so that a client which waits for the whole reply fails, not hangs)
            assert await asyncio.wait_for(anext(stream), 10) == "Hello!"
            assert await asyncio.wait_for(anext(stream), 10) == "I can help with that."
            # Both were yielded while the stand-in still holds the rest of its reply.
            assert server.pieces_sent == 5
            assert not release.is_set()
            release.set()
            assert await collect(stream) == ["Your order shipped yesterday.", "It arrives Monday."]
            assert server.pieces_sent == 8
        finally:
            await llm.aclose()
    [request] = server.requests
    assert (request.method, request.target) == ("POST", PATH)
    assert request.headers["authorization"] == "Bearer sk-local"
    assert "api-key" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert request.body["stream"] is True
    assert request.body["model"] == "stand-in"
    assert request.body["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "assistant", "content": "Thanks for calling. How can I help?"},
        {"role": "user", "content": "I ordered a lamp."},
        {"role": "user", "content": UTTERANCE},
    ]


async def test_the_connection_is_kept_for_the_next_reply() -> None:
    async with StandIn([sse("One. ", "Two.")]) as server:
        llm = ChatLlm(LlmConfig(server.url))
        try:
            assert await collect(llm.reply([], "Count.")) == ["One.", "Two."]
            assert await collect(
                llm.reply([("user", "Count."), ("assistant", "One. Two.")], "Again.")
            ) == [
                "One.",
                "Two.",
            ]
        finally:
            await llm.aclose()
    assert [len(r.body["messages"]) for r in server.requests] == [2, 4]
    assert "authorization" not in server.requests[0].headers  # no key, no header


async def test_http_error_status() -> None:
    error = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
    async with StandIn(status=401, error=error) as server:
        llm = ChatLlm(LlmConfig(server.url, api_key="wrong"))
        try:
            with pytest.raises(LlmError, match=r"HTTP 401: Incorrect API key provided") as caught:
                await collect(llm.reply([], UTTERANCE))
        finally:
            await llm.aclose()
    assert caught.value.status == 401


async def test_connection_dropped_mid_stream() -> None:
    stream = sse("It is on its way. It arri", "ves Mon")
    async with StandIn([stream[:260], CLOSE]) as server:
        llm = ChatLlm(LlmConfig(server.url))
        got: list[str] = []
        try:
            with pytest.raises(LlmError, match="connection broke off"):
                await collect(llm.reply([], UTTERANCE), got)
        finally:
            await llm.aclose()
    assert got == ["It is on its way."]  # what was complete before the break was spoken


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (sse("It is on its way.", done=False), r"ended before \[DONE\]"),
        (b"data: {oops\n\n", "malformed stream: not JSON"),
        (b'data: {"error": {"message": "The server is overloaded"}}\n\n', "overloaded"),
    ],
)
async def test_malformed_or_unfinished_streams(body: bytes, match: str) -> None:
    async with StandIn([body]) as server:
        llm = ChatLlm(LlmConfig(server.url))
        try:
            with pytest.raises(LlmError, match=match) as caught:
                await collect(llm.reply([], UTTERANCE))
        finally:
            await llm.aclose()
    assert str(caught.value).startswith(f"LLM {server.url}: ")


async def test_timeout() -> None:
    never = asyncio.Event()
    async with StandIn([sse("Hmm")[:20], never]) as server:
        llm = ChatLlm(LlmConfig(server.url, timeout_s=0.2))
        try:
            with pytest.raises(LlmError, match=r"no answer within 0.2 s"):
                await collect(llm.reply([], UTTERANCE))
        finally:
            await llm.aclose()


async def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}{PATH}"
    llm = ChatLlm(LlmConfig(url))
    try:
        with pytest.raises(LlmError, match="cannot connect"):
            await collect(llm.reply([], UTTERANCE))
    finally:
        await llm.aclose()


async def test_azure_gets_its_api_key_header() -> None:
    # An Azure OpenAI deployment URL, its host reached through the stand-in as an HTTP proxy
    # (no name resolution; the stand-in sees the absolute URL).
    azure = (
        "http://contoso.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions"
        "?api-version=2024-06-01"
    )
    async with StandIn([sse("Sure.")]) as server:
        config = LlmConfig.from_env(azure, {"CS_LLM_API_KEY": "azure-key"})
        client = httpx.AsyncClient(proxy=f"http://127.0.0.1:{server.port}", timeout=5)
        llm = ChatLlm(config, client)
        try:
            assert await collect(llm.reply([], UTTERANCE)) == ["Sure."]
        finally:
            await llm.aclose()
    [request] = server.requests
    target = urlsplit(request.target)
    assert target.hostname == "contoso.openai.azure.com"
    assert target.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert target.query == "api-version=2024-06-01"
    assert request.headers["api-key"] == "azure-key"
    assert "authorization" not in request.headers
    assert "model" not in request.body
