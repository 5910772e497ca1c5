"""NLP insights: utterances analysed per second per core, and final transcript → last insight.

One run against processes started here: a private, empty ``redis-server`` on a free port and
one ``callstream worker nlp --max-calls M`` (M = max(N, 250) unless ``--max-calls``) under a
fresh ``CS_PREFIX``. No gateway or transcriber: the bench writes to Redis exactly what they
would publish. For each of N calls: its ``started`` entry on ``cs:calls`` and ``call.started``
(as the gateway), a few DTMF tones, then — as the transcriber — one utterance of a scripted
contact-centre conversation (31 turns, agent and caller alternating: a billing complaint, an
account number, a card number and a phone number read digit by digit, a spoken e-mail address,
a cancellation) every ``--interval`` s (default 3), each preceded by two Intermediate results,
on the call's events stream and ``cs:insights``; at the end ``call.ended`` and
``transcribe.done``. The calls are staggered over the interval; the numbers, names and amounts
differ per call. Every event of one call is checked against shared/catalogue.py first.

Reported: finals and insights published; latency per final — its entry id on the call's events
stream (Redis's clock) → the entry id of the last ``nlp.*`` insight about it (``data.utterance``)
— p50/p99/max, and the same to its ``nlp.sentiment``; finals without an ``nlp.sentiment`` and
calls without ``nlp.summary`` (both must be 0: the bench exits 1 otherwise); the worker's CPU %
and RSS over the steady window (from ``--seconds``/4, at most 5 s, to the last final) and
utterances analysed (``nlp.sentiment`` published in the window) per CPU-second of the worker;
its read delay histogram. And, in-process on one thread before the run, the baseline on the same
utterances: µs per utterance of each analyser (find_pii + redact, VADER, YAKE, intents) and of
the whole handler with in-memory ports, so the runtime's share of the worker's CPU shows.

``--fast`` adds a saturation run (fresh Redis and worker): every call's events are written
before the calls are offered, so the worker reads as fast as it can; utterances per second of
wall time and per CPU-second of the worker, until every call's ``nlp.done``.

    python -m bench nlp --calls 200 --seconds 60 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from bench import servers
from bench.echo import (
    child_process,
    kill_leftovers,
    machine_busy_s,
    private_redis,
    wait_until_ready,
)
from callstream.shared.catalogue import TRANSCRIPT, validate
from callstream.shared.entries import (
    CallStarted,
    InEnd,
    InEntry,
    InFrame,
    encode_call,
    encode_in,
    parse_id,
)
from callstream.shared.events import CALL_ENDED, CALL_STARTED, DTMF, Event
from callstream.shared.settings import Settings

RATE_HZ = 16000
SILENT_FRAME = bytes(640)  # 20 ms of 16 kHz PCM16
TICKS_PER_MS = 10_000
WORDS_PER_S = 2.6  # speaking rate of the scripted utterances
DRAIN_S = 30.0  # after the last event, wait at most this long for every call's nlp.done
START_TIMEOUT_S = 30.0
AGENT_CHANNEL, CALLER_CHANNEL = 0, 1
NLP_TYPES = ("nlp.sentiment", "nlp.key_phrases", "nlp.intent", "nlp.pii")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FIRST_NAMES = ("john", "maria", "david", "sarah", "li", "ahmed", "emma", "carlos", "anna", "tom")
AGENTS = ("jessica", "michael", "priya", "daniel", "fatima", "kevin")

# A contact-centre call: agent (A) and caller (C) alternating. {fields} differ per call.
SCRIPT: tuple[tuple[str, str], ...] = (
    ("A", "thank you for calling acme telecom my name is {agent} how can i help you today"),
    ("C", "hi yes i have a question about my bill there is a charge i do not recognise"),
    ("A", "i am sorry to hear that can i have your account number please"),
    ("C", "sure it is {account}"),
    ("A", "thank you and can you confirm the email address on the account"),
    ("C", "yes it is {name} at example dot com"),
    ("A", "thank you {name} i can see the account now which charge are you asking about"),
    ("C", "there is a charge of {amount} dollars on my last invoice for calls i never made"),
    ("A", "let me look into that for you it looks like a roaming package was added last month"),
    ("C", "i never asked for that this is the worst service i have ever had i am really angry"),
    ("A", "i completely understand your frustration and i apologise for the inconvenience"),
    ("C", "honestly i have been a customer for {years} years and this keeps happening"),
    ("A", "i can remove the roaming package and refund the charge to your card"),
    ("C", "okay please refund it to my card the number is {card}"),
    ("A", "thank you the refund will appear within five to seven business days"),
    ("C", "and while i have you i want to cancel my subscription to the sports package"),
    ("A", "i can help with that may i ask why you would like to cancel"),
    ("C", "it is too expensive and i barely watch it the price went up again"),
    ("A", "we do have a cheaper plan that keeps the main channels would that interest you"),
    ("C", "no thank you just cancel it please"),
    ("A", "no problem i have cancelled the sports package from the end of this billing cycle"),
    ("C", "great can you send me a confirmation by email"),
    ("A", "of course is there a phone number we can reach you on if we need to"),
    ("C", "yes my phone number is {phone}"),
    ("A", "thank you i have updated your contact details"),
    ("C", "my internet has also been dropping every evening is that a known problem"),
    ("A", "there is a known outage in your area our engineers expect to fix it by friday"),
    ("C", "that is disappointing but thank you for letting me know"),
    ("A", "is there anything else i can help you with today"),
    ("C", "no that is everything thank you you have been very helpful"),
    ("A", "thank you for calling acme telecom have a great day goodbye"),
)


def spoken(digits: str) -> str:
    return " ".join(DIGIT_WORDS[int(d)] for d in digits)


def luhn_complete(partial: str) -> str:
    """``partial`` with the Luhn check digit appended."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return partial + str((10 - total % 10) % 10)


def conversation(index: int) -> list[tuple[str, str]]:
    """Call ``index``'s utterances: (speaker A/C, text), the script with this call's details,
    started at a different turn per call (so the utterances in flight at once differ)."""
    rng = random.Random(index)
    values = {
        "agent": AGENTS[index % len(AGENTS)],
        "name": FIRST_NAMES[index % len(FIRST_NAMES)],
        "account": spoken(f"{rng.randrange(10**7, 10**8)}"),
        "amount": rng.choice(("twelve", "forty five", "thirty", "ninety nine", "sixty")),
        "years": rng.choice(("ten", "five", "twelve", "three")),
        "card": spoken(luhn_complete("4" + "".join(rng.choice("0123456789") for _ in range(14)))),
        "phone": spoken(f"2025550{rng.randrange(100, 200)}"),
    }
    turns = [(who, text.format(**values)) for who, text in SCRIPT]
    shift = index % len(turns)
    return turns[shift:] + turns[:shift]


# --------------------------------------------------------------------------- the calls' events


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to publish: at ``at_s`` after the run's start."""

    at_s: float
    call: int
    what: str  # start, dtmf, partial, final, end, done
    arg: Any = None


@dataclass
class CallPlan:
    index: int
    call_id: str
    caller: str
    agent: str
    start_s: float  # the call's start, from the run's start
    utterances: list[tuple[str, str]]


def transcript_data(
    text: str, participant: str, onset_ms: int, duration_ms: int, status: str
) -> dict[str, Any]:
    words = text.split()
    step = duration_ms * TICKS_PER_MS // max(1, len(words))
    start = onset_ms * TICKS_PER_MS
    return {
        "text": text,
        "format": "display",
        "confidence": 0.62 if status == "Final" else 0.4,
        "offset": start,
        "duration": duration_ms * TICKS_PER_MS,
        "words": [
            {"text": w, "offset": start + i * step, "duration": step} for i, w in enumerate(words)
        ],
        "participantRawID": participant,
        "resultStatus": status,
    }


class Calls:
    """The plan of every call's events, and the events themselves."""

    def __init__(self, n: int, seconds: float, interval_s: float, tag: str) -> None:
        self.interval_s = interval_s
        self.seconds = seconds
        self.finals_per_call = max(1, int(seconds // interval_s))
        self.plans = [
            CallPlan(
                i,
                f"nlp-{tag}-{i}",
                f"4:+1425555{i:04d}",
                f"8:acs:agent-{i % 40:02d}",
                interval_s * i / n,
                conversation(i),
            )
            for i in range(n)
        ]

    def utterance(self, call: CallPlan, k: int) -> tuple[int, str, str, int, int]:
        """The k-th utterance (0-based) of a call: channel, participant, text, onset and
        duration (call-relative ms). Utterance k ends where its final is published."""
        who, text = call.utterances[k % len(call.utterances)]
        channel, participant = (
            (AGENT_CHANNEL, call.agent) if who == "A" else (CALLER_CHANNEL, call.caller)
        )
        end_ms = int((k + 1) * self.interval_s * 1000)
        duration_ms = min(
            int(len(text.split()) / WORDS_PER_S * 1000), int(self.interval_s * 1000) - 300
        )
        return channel, participant, text, end_ms - duration_ms, duration_ms

    def schedule(self) -> list[Item]:
        """Every item of every call, in time order."""
        items: list[Item] = []
        for call in self.plans:
            s = call.start_s
            items.append(Item(s, call.index, "start"))
            for j, tone in enumerate("12#"):
                items.append(Item(s + 0.4 + 0.3 * j, call.index, "dtmf", (20 + 15 * j, tone)))
            for k in range(self.finals_per_call):
                final_s = s + (k + 1) * self.interval_s
                items.append(Item(final_s - 2 * self.interval_s / 3, call.index, "partial", (k, 1)))
                items.append(Item(final_s - self.interval_s / 3, call.index, "partial", (k, 2)))
                items.append(Item(final_s, call.index, "final", k))
            end_s = s + max(self.seconds, self.finals_per_call * self.interval_s) + 0.2
            for t in range(int(end_s - s)):
                items.append(Item(s + t + 0.01, call.index, "in", t))
            items.append(Item(end_s - 0.01, call.index, "inend"))
            items.append(Item(end_s, call.index, "end"))
            items.append(Item(end_s + 0.3, call.index, "done"))
        items.sort(key=lambda item: item.at_s)
        return items

    def event(self, item: Item, now_ms: int) -> Event | None:
        """The event of ``item`` (None for ``start``: see :meth:`started`)."""
        call = self.plans[item.call]
        cid = call.call_id
        if item.what == "dtmf":
            seq, tone = item.arg
            return Event(
                f"{cid}:dtmf:{seq}", cid, DTMF, now_ms, {"tone": tone, "participant": call.caller}
            )
        if item.what in ("partial", "final"):
            k, part = (item.arg, 3) if item.what == "final" else item.arg
            channel, participant, text, onset_ms, duration_ms = self.utterance(call, k)
            base = f"{cid}:{TRANSCRIPT}:{channel}:{onset_ms}"
            if item.what == "final":
                data = transcript_data(text, participant, onset_ms, duration_ms, "Final")
                return Event(base, cid, TRANSCRIPT, now_ms, data)
            words = text.split()
            shown = words[: max(1, len(words) * part // 3)]
            heard_ms = duration_ms * part // 3
            data = transcript_data(" ".join(shown), participant, onset_ms, heard_ms, "Intermediate")
            return Event(f"{base}:partial:{heard_ms}", cid, TRANSCRIPT, now_ms, data)
        if item.what == "end":
            frames = int(self.seconds * 50 * 2)
            return Event(
                f"{cid}:ended", cid, CALL_ENDED, now_ms, {"reason": "normal", "frames": frames}
            )
        if item.what == "done":
            data = {"kind": "transcribe", "reason": "normal"}
            return Event(f"{cid}:transcribe.done", cid, "transcribe.done", now_ms, data)
        return None

    def started(self, item: Item, now_ms: int) -> tuple[CallStarted, Event]:
        call = self.plans[item.call]
        cid = call.call_id
        entry = CallStarted(cid, RATE_HZ, "unmixed", now_ms, "bench-nlp")
        event = Event(
            f"{cid}:started", cid, CALL_STARTED, now_ms, {"rate_hz": RATE_HZ, "mode": "unmixed"}
        )
        return entry, event

    def final_id(self, call: int, k: int) -> str:
        plan = self.plans[call]
        channel, _, _, onset_ms, _ = self.utterance(plan, k)
        return f"{plan.call_id}:{TRANSCRIPT}:{channel}:{onset_ms}"


def check_events(calls: Calls) -> int:
    """Validate every event of the first call against the catalogue; the number checked."""
    checked = 0
    now_ms = int(time.time() * 1000)
    for item in calls.schedule():
        if item.call != 0 or item.what in ("in", "inend"):
            continue
        if item.what == "start":
            _, event = calls.started(item, now_ms)
        else:
            maybe = calls.event(item, now_ms)
            assert maybe is not None
            event = maybe
        validate(event.to_json(), allow={"transcribe.done"})
        checked += 1
    return checked


class Publisher:
    """Writes items to Redis as the gateway and the transcriber would, in pipelines."""

    def __init__(self, client: aioredis.Redis, settings: Settings, calls: Calls) -> None:
        self.client = client
        self.keys = settings.keys
        self.settings = settings
        self.calls = calls
        self.final_ms: dict[str, int] = {}  # final transcript id → its entry's ms (Redis clock)
        self.published = 0

    async def publish(self, items: Sequence[Item]) -> None:
        now_ms = int(time.time() * 1000)
        keys, settings = self.keys, self.settings
        pipe = self.client.pipeline(transaction=False)
        finals: list[tuple[int, str]] = []
        n = 0
        for item in items:
            cid = self.calls.plans[item.call].call_id
            if item.what in ("in", "inend"):
                # The gateway's inbound stream, sparsely: the nlp worker does not read it, but
                # its runtime ends a call whose inbound stream is quiet for
                # CS_CALL_IDLE_TIMEOUT_S (the gateway writes 50 frames a second per
                # participant; one a second keeps the call alive at a fraction of the cost).
                entry_in: InEntry = (
                    InEnd("normal")
                    if item.what == "inend"
                    else InFrame(item.arg * 100, now_ms, "", 0, True, SILENT_FRAME)
                )
                pipe.xadd(
                    keys.call_in(cid),
                    encode_in(entry_in),
                    maxlen=settings.in_stream_maxlen,
                    approximate=True,
                )
                n += 1
                continue
            if item.what == "start":
                entry, event = self.calls.started(item, now_ms)
                pipe.xadd(keys.calls, encode_call(entry))
                n += 1
            else:
                maybe = self.calls.event(item, now_ms)
                assert maybe is not None
                event = maybe
            fields = event.fields()
            if item.what == "final":
                finals.append((n, event.id))
            pipe.xadd(
                keys.call_events(cid),
                fields,
                maxlen=settings.events_maxlen,
                approximate=True,
            )
            pipe.xadd(
                keys.insights,
                fields,
                maxlen=settings.insights_maxlen,
                approximate=True,
            )
            n += 2
        replies = await pipe.execute()
        for index, event_id in finals:
            self.final_ms[event_id] = parse_id(replies[index].decode())[0]
        self.published += len(items)


# --------------------------------------------------------------------------- baseline


def baseline(calls: Calls, limit: int = 600, rounds: int = 3) -> dict[str, Any]:
    """Each analyser, and the whole handler with in-memory ports, on this run's utterances
    (at most ``limit``), in this process on one thread: CPU µs per utterance."""
    from callstream.workers.nlp.intents import IntentMatcher, default_intents  # noqa: PLC0415
    from callstream.workers.nlp.phrases import KeyPhrases  # noqa: PLC0415
    from callstream.workers.nlp.pii import find_pii, redact  # noqa: PLC0415
    from callstream.workers.nlp.sentiment import SentimentScorer  # noqa: PLC0415
    from callstream.workers.nlp.worker import Analysers, nlp_factory  # noqa: PLC0415
    from callstream.workers.testing import memory_context  # noqa: PLC0415

    texts: list[str] = []
    events_by_call: list[list[Event]] = []
    now_ms = int(time.time() * 1000)
    for plan in calls.plans:
        mine = []
        for k in range(calls.finals_per_call):
            item = Item(0.0, plan.index, "final", k)
            event = calls.event(item, now_ms)
            assert event is not None
            texts.append(str(event.data["text"]))
            mine.append(event)
            if len(texts) >= limit:
                break
        events_by_call.append(mine)
        if len(texts) >= limit:
            break
    scorer = SentimentScorer()
    phrases = KeyPhrases()
    intents = IntentMatcher(default_intents())

    def pii(text: str) -> None:
        found = find_pii(text)
        if found:
            redact(text, found)

    steps = {
        "pii (find_pii + redact)": pii,
        "sentiment (VADER)": scorer.score,
        "key phrases (YAKE)": lambda t: phrases.extract(t, 5),
        "intents (rapidfuzz)": intents.match,
    }
    for step in steps.values():  # warm up: lazy imports, caches, the YAKE extractor
        for text in texts[:40]:
            step(text)
    per_step: dict[str, float] = {}
    for _ in range(rounds):  # the best of a few rounds: the machine is shared
        for name, step in steps.items():
            c0 = time.thread_time()
            for text in texts:
                step(text)
            us = (time.thread_time() - c0) / len(texts) * 1e6
            per_step[name] = min(us, per_step.get(name, math.inf))
    analysers_us = sum(per_step.values())

    factory = nlp_factory(Analysers(scorer, phrases, intents, redact=False))

    async def handle_all() -> float:
        c0 = time.thread_time()
        for mine in events_by_call:
            if not mine:
                continue
            handler = factory(memory_context(mine[0].call_id, mode="unmixed", kind="nlp"))
            for event in mine:  # one final per batch, as at real time
                await handler.handle([("1-0", event)])
        return time.thread_time() - c0

    handler_s = min(asyncio.run(handle_all()) for _ in range(rounds))
    handler_us = handler_s / len(texts) * 1e6
    return {
        "utterances": len(texts),
        "rounds": rounds,
        "mean_words": float(np.mean([len(t.split()) for t in texts])),
        "us_per_utterance": per_step,
        "analysers_us_per_utterance": analysers_us,
        "analysers_utterances_per_core_s": 1e6 / analysers_us,
        "handler_us_per_utterance": handler_us,
        "handler_utterances_per_core_s": 1e6 / handler_us,
    }


# --------------------------------------------------------------------------- one run


@dataclass
class Sample:
    t: float  # time.time()
    worker_cpu: float
    redis_cpu: float
    gen_cpu: float
    machine: float
    rss: int


@dataclass
class Run:
    """The processes of a run."""

    client: aioredis.Redis
    settings: Settings
    worker: servers.Server
    redis: servers.Server
    samples: list[Sample] = field(default_factory=list)

    def sample(self) -> Sample:
        s = Sample(
            time.time(),
            self.worker.cpu_seconds(),
            self.redis.cpu_seconds(),
            time.process_time(),
            machine_busy_s(),
            self.worker.rss_bytes(),
        )
        self.samples.append(s)
        return s

    async def sampler(self, period_s: float = 0.5) -> None:
        while True:
            self.sample()
            await asyncio.sleep(period_s)


def _pct(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


async def wait_done(run: Run, calls: Calls, deadline_s: float) -> tuple[int, float]:
    """Until every call's last event is ``nlp.done`` (or the deadline): (calls done, when)."""
    keys = run.settings.keys
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    pending = [plan.call_id for plan in calls.plans]
    while True:
        pipe = run.client.pipeline(transaction=False)
        for cid in pending:
            pipe.xrevrange(keys.call_events(cid), count=1)
        replies = await pipe.execute()
        pending = [
            cid
            for cid, reply in zip(pending, replies, strict=True)
            if not reply or reply[0][1].get(b"type") != b"nlp.done"
        ]
        if not pending or loop.time() > end:
            return len(calls.plans) - len(pending), time.time()
        await asyncio.sleep(0.2)


async def collect(run: Run, calls: Calls) -> dict[str, Any]:
    """Every call's events, read back: insights per final, summaries, done markers."""
    keys = run.settings.keys
    pipe = run.client.pipeline(transaction=False)
    for plan in calls.plans:
        pipe.xrange(keys.call_events(plan.call_id))
    replies = await pipe.execute()
    last_ms: dict[str, int] = {}
    sentiment_ms: dict[str, int] = {}
    counts: dict[str, int] = {}
    summaries = 0
    done = 0
    invalid: list[str] = []
    checked = 0
    for plan, entries in zip(calls.plans, replies, strict=True):
        for entry_id, raw in entries:
            kind = raw.get(b"type", b"").decode()
            if not kind.startswith("nlp."):
                continue
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "nlp.summary":
                summaries += 1
            elif kind == "nlp.done":
                done += 1
            if plan.index < 2:  # the worker's events of two calls against the catalogue
                checked += 1
                try:
                    validate(raw[b"event"])
                except ValueError as exc:
                    invalid.append(str(exc)[:200])
            if kind not in NLP_TYPES:
                continue
            utterance = json.loads(raw[b"event"])["data"]["utterance"]
            ms = parse_id(entry_id.decode())[0]
            if ms > last_ms.get(utterance, 0):
                last_ms[utterance] = ms
            if kind == "nlp.sentiment":
                sentiment_ms[utterance] = ms
    return {
        "last_ms": last_ms,
        "sentiment_ms": sentiment_ms,
        "counts": counts,
        "summaries": summaries,
        "done": done,
        "invalid": invalid,
        "validated": checked,
    }


def _delay_histogram(worker: servers.Server) -> servers.Histogram | None:
    try:
        return servers.gateway_histogram(worker, "callstream_worker_delay_seconds")
    except (OSError, RuntimeError):
        return None


async def with_servers(
    max_calls: int, body: Any, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``body(run)`` against a fresh private Redis and one nlp worker."""
    prefix = f"bench-nlp-{uuid.uuid4().hex[:8]}"
    async with private_redis() as (redis_url, redis_pid):
        env = {"REDIS_URL": redis_url, "CS_PREFIX": prefix, **(extra_env or {})}
        settings = Settings.from_env(env)
        metrics_port = servers.free_port()
        argv = servers.worker(
            "nlp",
            "--max-calls",
            str(max_calls),
            "--metrics-port",
            str(metrics_port),
            "--metrics-host",
            "127.0.0.1",
        )
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with child_process("nlp worker", argv, env) as proc:
                await wait_until_ready("the nlp worker", metrics_port, proc)
                run = Run(
                    client,
                    settings,
                    servers.Server("worker", proc.pid, metrics_port),
                    servers.Server("redis-server", redis_pid, 0),
                )
                result: dict[str, Any] = await body(run)
                if proc.returncode is not None:
                    result["worker_exit"] = proc.returncode
        finally:
            await client.aclose()
    result["max_calls"] = max_calls
    return result


def write_details(path: str, finals: dict[str, int], got: dict[str, Any]) -> None:
    """Each final's publish time and its insights' (Redis ms), TSV."""
    with open(path, "w") as out:
        out.write("final_id\tpublished_ms\tsentiment_ms\tlast_insight_ms\n")
        for f, ms in sorted(finals.items(), key=lambda kv: kv[1]):
            sentiment, last = got["sentiment_ms"].get(f, ""), got["last_ms"].get(f, "")
            out.write(f"{f}\t{ms}\t{sentiment}\t{last}\n")


async def realtime(run: Run, calls: Calls, details: str | None = None) -> dict[str, Any]:
    """The calls at real-time pace; every figure of the run."""
    loop = asyncio.get_running_loop()
    items = calls.schedule()
    publisher = Publisher(run.client, run.settings, calls)
    rss0 = run.worker.rss_bytes()
    warmup_s = min(5.0, calls.seconds / 4)
    last_final_s = max(i.at_s for i in items if i.what == "final")
    lateness: list[float] = []
    sampler = asyncio.create_task(run.sampler())
    hist0: list[servers.Histogram | None] = []

    async def window_start() -> None:
        await asyncio.sleep(warmup_s)
        hist0.append(await asyncio.to_thread(_delay_histogram, run.worker))

    t0_wall = time.time() + 0.05
    t0 = loop.time() + 0.05
    window_task = asyncio.create_task(window_start())
    heap = [(item.at_s, n, item) for n, item in enumerate(items)]
    heapq.heapify(heap)
    try:
        while heap:
            delay = t0 + heap[0][0] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now_s = loop.time() - t0
            due: list[Item] = []
            while heap and heap[0][0] <= now_s:
                due.append(heapq.heappop(heap)[2])
            lateness.append((now_s - due[0].at_s) * 1000)
            await publisher.publish(due)
        sent_s = time.time() - t0_wall
        calls_done, done_at = await wait_done(run, calls, DRAIN_S)
        await window_task
        hist1 = await asyncio.to_thread(_delay_histogram, run.worker)
    finally:
        sampler.cancel()
        window_task.cancel()
    run.sample()
    got = await collect(run, calls)
    # The steady window: from the warm-up to the last final, in samples.
    w0, w1 = t0_wall + warmup_s, t0_wall + last_final_s
    s0 = min(run.samples, key=lambda s: abs(s.t - w0))
    s1 = min(run.samples, key=lambda s: abs(s.t - w1))
    wall = s1.t - s0.t
    analysed = sum(1 for ms in got["sentiment_ms"].values() if s0.t * 1000 <= ms <= s1.t * 1000)
    worker_cpu_s = s1.worker_cpu - s0.worker_cpu
    finals = publisher.final_ms
    latency = [got["last_ms"][f] - ms for f, ms in finals.items() if f in got["last_ms"]]
    to_sentiment = [
        got["sentiment_ms"][f] - ms for f, ms in finals.items() if f in got["sentiment_ms"]
    ]
    # Latency over time: p99 per 5 s of the run (by the final's publish time).
    by_5s: dict[int, list[float]] = {}
    for f, ms in finals.items():
        if f in got["last_ms"]:
            by_5s.setdefault(int((ms / 1000 - t0_wall) // 5), []).append(got["last_ms"][f] - ms)
    if details:
        write_details(details, finals, got)
    result: dict[str, Any] = {
        "calls": len(calls.plans),
        "seconds": calls.seconds,
        "interval_s": calls.interval_s,
        "finals_per_call": calls.finals_per_call,
        "events_published": publisher.published,
        "finals_published": len(finals),
        "finals_per_s": len(finals) / sent_s if sent_s else 0.0,
        "insights": got["counts"],
        "insights_total": sum(v for k, v in got["counts"].items() if k in NLP_TYPES),
        "finals_without_sentiment": sum(1 for f in finals if f not in got["sentiment_ms"]),
        "calls_with_summary": got["summaries"],
        "calls_done": got["done"],
        "calls_done_within_drain": calls_done,
        "drain_s_after_last_event": done_at - (t0_wall + sent_s),
        "worker_events_validated": got["validated"],
        "worker_events_invalid": got["invalid"],
        "latency_last_insight_ms": _pct(latency),
        "latency_sentiment_ms": _pct(to_sentiment),
        "latency_last_insight_p99_by_5s_ms": [
            float(np.percentile(by_5s[k], 99)) for k in sorted(by_5s)
        ],
        "window_s": wall,
        "utterances_analysed_in_window": analysed,
        "worker_cpu_s_in_window": worker_cpu_s,
        "utterances_per_core_s": analysed / worker_cpu_s if worker_cpu_s > 0 else None,
        "worker_cpu_ms_per_utterance": 1000 * worker_cpu_s / analysed if analysed else None,
        "cpu_pct": {
            "worker": 100 * worker_cpu_s / wall,
            "redis-server": 100 * (s1.redis_cpu - s0.redis_cpu) / wall,
            "generator": 100 * (s1.gen_cpu - s0.gen_cpu) / wall,
        },
        "machine_cpu_pct": {
            "busy": 100 * (s1.machine - s0.machine) / wall,
            "cores": os.cpu_count(),
        },
        "worker_rss_mib": {"start": rss0 / 2**20, "end": s1.rss / 2**20},
        "generator_lateness_ms": _pct(lateness),
    }
    busy = result["machine_cpu_pct"]["busy"]
    result["machine_cpu_pct"]["other_processes"] = busy - sum(result["cpu_pct"].values())
    if hist0 and hist0[0] is not None and hist1 is not None:
        delta = hist1.minus(hist0[0])
        # An events-only kind's end of input (InEnd) is handed over under the id "0-0", so
        # each call's end is observed as ~55 years late: left out (the +Inf bucket).
        finite = [(le, c) for le, c in delta.buckets if le != math.inf]
        kept = servers.Histogram(finite, finite[-1][1] if finite else 0.0)
        result["worker_read_delay_ms"] = {
            "p50": kept.quantile(0.5) * 1000,
            "p90": kept.quantile(0.9) * 1000,
            "p99": kept.quantile(0.99) * 1000,
            "reads": kept.count,
            "reads_over_60s_left_out": delta.count - kept.count,
        }
    result["passed"] = (
        result["finals_without_sentiment"] == 0
        and got["summaries"] == len(calls.plans)
        and not got["invalid"]
    )
    return result


async def saturation(run: Run, calls: Calls) -> dict[str, Any]:
    """Every call's events written first, then the calls offered at once: as fast as it goes."""
    items = calls.schedule()
    publisher = Publisher(run.client, run.settings, calls)
    starts = [i for i in items if i.what == "start"]
    # No inbound stream (its end marker would make the calls backlog): the worker runs with
    # CS_CALL_IDLE_TIMEOUT_S raised instead.
    rest = [i for i in items if i.what not in ("start", "in", "inend")]
    # The events first (the calls not offered yet), in pipelines of a few hundred.
    for n in range(0, len(rest), 500):
        await publisher.publish(rest[n : n + 500])
    finals = len(publisher.final_ms)
    before = run.sample()
    t0 = time.time()
    await publisher.publish(starts)  # the `started` entries: the worker takes the calls now
    calls_done, done_at = await wait_done(run, calls, 600.0)
    after = run.sample()
    got = await collect(run, calls)
    keys = run.settings.keys
    pipe = run.client.pipeline(transaction=False)
    for plan in calls.plans:
        pipe.xrevrange(keys.call_events(plan.call_id), count=1)
    last = [parse_id(r[0][0].decode())[0] for r in await pipe.execute() if r]
    wall = (max(last) / 1000 - t0) if last else done_at - t0
    cpu = after.worker_cpu - before.worker_cpu
    analysed = len(got["sentiment_ms"])
    return {
        "calls": len(calls.plans),
        "finals": finals,
        "events_read": len(rest),
        "calls_done": calls_done,
        "finals_without_sentiment": finals - analysed,
        "calls_with_summary": got["summaries"],
        "wall_s": wall,
        "worker_cpu_s": cpu,
        "worker_cpu_pct": 100 * cpu / (after.t - before.t),
        "redis_cpu_pct": 100 * (after.redis_cpu - before.redis_cpu) / (after.t - before.t),
        "utterances_per_s": analysed / wall if wall > 0 else None,
        "utterances_per_core_s": analysed / cpu if cpu > 0 else None,
        "worker_cpu_ms_per_utterance": 1000 * cpu / analysed if analysed else None,
        "worker_rss_mib": after.rss / 2**20,
        "passed": analysed == finals and got["summaries"] == len(calls.plans),
    }


# --------------------------------------------------------------------------- report


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def report(results: dict[str, Any]) -> str:
    lines = [""]

    def row(label: str, value: str) -> None:
        lines.append(f"{label:52}{value:>22}")

    base = results.get("baseline")
    if base:
        lines.append(
            f"baseline: in-process, one thread, {base['utterances']} utterances "
            f"({base['mean_words']:.1f} words on average)"
        )
        for name, us in base["us_per_utterance"].items():
            row(f"  {name} µs/utterance", _fmt(us, ".0f"))
        row("  analysers µs/utterance", _fmt(base["analysers_us_per_utterance"], ".0f"))
        row("  analysers utterances/s/core", _fmt(base["analysers_utterances_per_core_s"], ".0f"))
        row(
            "  handler (in-memory ports) µs/utterance",
            _fmt(base["handler_us_per_utterance"], ".0f"),
        )
        row("  handler utterances/s/core", _fmt(base["handler_utterances_per_core_s"], ".0f"))
    rt = results.get("realtime")
    if rt:
        lines.append(
            f"real time: {rt['calls']} calls x {rt['seconds']:g} s, one final per call every "
            f"{rt['interval_s']:g} s ({rt['finals_per_s']:.1f} finals/s), worker --max-calls "
            f"{rt['max_calls']}"
        )
        row("  finals published", str(rt["finals_published"]))
        row("  nlp insights (sentiment+phrases+intent+pii)", str(rt["insights_total"]))
        row("  finals without nlp.sentiment", str(rt["finals_without_sentiment"]))
        row(
            "  calls with nlp.summary / nlp.done",
            f"{rt['calls_with_summary']} / {rt['calls_done']}",
        )
        lat = rt["latency_last_insight_ms"] or {}
        sen = rt["latency_sentiment_ms"] or {}
        for q in ("p50", "p90", "p99", "max"):
            row(
                f"  latency final → last insight {q} ms",
                _fmt(lat.get(q), ".0f"),
            )
        row(
            "  latency final → nlp.sentiment p50 / p99 ms",
            f"{_fmt(sen.get('p50'), '.0f')} / {_fmt(sen.get('p99'), '.0f')}",
        )
        delay = rt.get("worker_read_delay_ms")
        if delay:
            row(
                "  worker read delay p50 / p99 ms (histogram)",
                f"{_fmt(delay['p50'])} / {_fmt(delay['p99'])}",
            )
        row("  steady window s", _fmt(rt["window_s"]))
        row("  utterances analysed in the window", str(rt["utterances_analysed_in_window"]))
        row("  worker CPU ms per utterance", _fmt(rt["worker_cpu_ms_per_utterance"], ".2f"))
        row("  utterances/s per core (worker CPU)", _fmt(rt["utterances_per_core_s"], ".0f"))
        for name, pct in rt["cpu_pct"].items():
            row(f"  CPU % {name}", _fmt(pct))
        row("  machine CPU % busy (all cores)", _fmt(rt["machine_cpu_pct"]["busy"]))
        row("    of which other processes", _fmt(rt["machine_cpu_pct"]["other_processes"]))
        rss = rt["worker_rss_mib"]
        row("  worker RSS MiB start / end", f"{rss['start']:.0f} / {rss['end']:.0f}")
        gl = rt["generator_lateness_ms"] or {}
        row("  generator lateness p50 / max ms", f"{_fmt(gl.get('p50'))} / {_fmt(gl.get('max'))}")
        row("  worker events invalid (catalogue)", str(len(rt["worker_events_invalid"])))
        lines.append(
            "  p99 ms per 5 s of the run: "
            + " ".join(_fmt(v, ".0f") for v in rt["latency_last_insight_p99_by_5s_ms"])
        )
        row("  target p99 ≤ 50 ms", "met" if lat.get("p99", math.inf) <= 50 else "NOT met")
    sat = results.get("saturation")
    if sat:
        lines.append(f"saturation: {sat['calls']} calls, {sat['finals']} finals written first")
        row("  wall s to the last nlp.done", _fmt(sat["wall_s"], ".2f"))
        row("  utterances/s (wall)", _fmt(sat["utterances_per_s"], ".0f"))
        row("  utterances/s per core (worker CPU)", _fmt(sat["utterances_per_core_s"], ".0f"))
        row("  worker CPU ms per utterance", _fmt(sat["worker_cpu_ms_per_utterance"], ".2f"))
        row(
            "  CPU % worker / redis-server",
            f"{sat['worker_cpu_pct']:.0f} / {sat['redis_cpu_pct']:.0f}",
        )
        row("  finals without nlp.sentiment", str(sat["finals_without_sentiment"]))
    if base and rt and rt.get("worker_cpu_ms_per_utterance"):
        share = base["analysers_us_per_utterance"] / 1000 / rt["worker_cpu_ms_per_utterance"]
        row("analysers' share of the worker's CPU (real time)", f"{100 * share:.0f} %")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=200, help="concurrent calls (default 200)")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="length of each call (default 60)"
    )
    parser.add_argument(
        "--interval", type=float, default=3.0, help="seconds between a call's finals (default 3)"
    )
    parser.add_argument(
        "--max-calls",
        type=int,
        default=None,
        help="the worker's --max-calls (default max(calls, 250))",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="also a saturation run: every call's events written first, read as fast as it goes",
    )
    parser.add_argument(
        "--fast-finals",
        type=int,
        default=3000,
        help="finals of the saturation run, over --fast-calls calls (default 3000)",
    )
    parser.add_argument(
        "--fast-calls",
        type=int,
        default=20,
        help="calls of the saturation run (default 20: with every call's events there at "
        "once, the worker's loop runs each call's batch of 100 entries back to back, and with "
        "200 calls it stalls long enough for its writer to take Redis for unreachable)",
    )
    parser.add_argument("--skip-realtime", action="store_true", help="only the saturation run")
    parser.add_argument("--skip-baseline", action="store_true", help="skip the in-process baseline")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument(
        "--details", help="write each final's publish and insight times (Redis ms) here, TSV"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    max_calls = args.max_calls if args.max_calls is not None else max(args.calls, 250)
    tag = uuid.uuid4().hex[:6]
    calls = Calls(args.calls, args.seconds, args.interval, tag)
    results: dict[str, Any] = {
        "calls": args.calls,
        "seconds": args.seconds,
        "interval_s": args.interval,
        "events_validated": check_events(calls),
    }
    if not args.skip_baseline:
        print("[baseline] analysers in-process", flush=True)
        results["baseline"] = await asyncio.to_thread(baseline, calls)
    if not args.skip_realtime:
        print(f"[real time] {args.calls} calls, {args.seconds:g} s", flush=True)
        results["realtime"] = await with_servers(
            max_calls, lambda r: realtime(r, calls, args.details)
        )
    if args.fast:
        per_call = max(1, args.fast_finals // args.fast_calls)
        fast_calls = Calls(args.fast_calls, per_call * args.interval, args.interval, tag + "f")
        print(f"[saturation] {args.fast_calls} calls x {per_call} finals", flush=True)
        results["saturation"] = await with_servers(
            max(max_calls, args.fast_calls),
            lambda r: saturation(r, fast_calls),
            {"CS_CALL_IDLE_TIMEOUT_S": "3600"},
        )
    results["passed"] = all(
        results[name]["passed"] for name in ("realtime", "saturation") if name in results
    )
    return results


def main(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.seconds < args.interval:
        print("--calls must be at least 1 and --seconds at least --interval", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: subprocesses stopped", file=sys.stderr)
        return 130
    finally:
        kill_leftovers()
    print(report(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    if not results["passed"]:
        print(
            "FAILED: a final without nlp.sentiment, a call without nlp.summary, or an invalid "
            "insight",
            file=sys.stderr,
        )
        return 1
    return 0
