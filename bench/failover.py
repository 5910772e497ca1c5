"""Failover soak: calls transcribed while their worker replicas are killed and stopped, again.

``--replicas`` ``callstream worker transcribe`` processes serve ``--calls`` emulated calls of
``--seconds`` of speech, streamed at real time through a gateway process (real Redis). Every
``--every`` seconds the replica that owns one of the calls (each call in turn) gets SIGKILL or
SIGTERM (alternately), and a fresh replica starts in its place. At the end each call's final
transcripts, one per event id, are compared with the same engine decoding the whole audio
offline. The tests check one kill or stop; this repeats them under churn. Reported: finals
expected, missing, unexpected, ids published with two different texts (exit 1 if any), finals
with the same text as the uninterrupted decode, takeover times, exit codes after SIGTERM.

    python -m bench failover --calls 2 --seconds 60 --replicas 3 --every 7
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from bench import servers
from bench.ingest import cleanup
from bench.transcribe import RATE, frames_of, speech
from callstream.shared.audio import is_silent
from callstream.shared.entries import StreamEntries
from callstream.shared.events import Event
from callstream.shared.settings import DEFAULT_REDIS_URL, Settings
from callstream.simulate import simulate
from callstream.workers.stt.pocketsphinx_engine import pocketsphinx_factory
from callstream.workers.stt.transcript import TRANSCRIPT
from callstream.workers.transcribe import Outgoing, Transcriber

HEARTBEAT_S = 0.5


def final_texts(events: Sequence[Event | Outgoing]) -> dict[str, set[tuple[int, str]]]:
    """Final transcripts by what they are about (the event id after ``{call}:transcript:``):
    every (offset, text) published under that id."""
    out: dict[str, set[tuple[int, str]]] = defaultdict(set)
    for event in events:
        if event.type == TRANSCRIPT and event.data["resultStatus"] == "Final":
            if isinstance(event, Outgoing):
                key = event.key
            else:
                key = event.id.removeprefix(f"{event.call_id}:{TRANSCRIPT}:")
            out[key].add((event.data["offset"], event.data["text"]))
    return out


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    # Whole sentences and a pause at the end: an utterance cut by the end of the audio is
    # another comparison (tested elsewhere).
    audio = speech(args.seconds) + bytes(RATE * 3)
    # The emulator flags quiet frames `silent`, as ACS does, and the detector honours it.
    frames = [
        (entry_id, dataclasses.replace(frame, silent=is_silent(frame.pcm)))
        for entry_id, frame in frames_of(audio)
    ]
    reference = final_texts(Transcriber("ref", RATE, pocketsphinx_factory).process(frames, True))
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=args.redis_url, prefix=prefix)
    env = {"REDIS_URL": args.redis_url, "CS_PREFIX": prefix}
    group = settings.keys.group("transcribe")
    replicas: dict[str, asyncio.subprocess.Process] = {}
    started = 0

    async def start_replica() -> None:
        nonlocal started
        name = f"r{started}"
        started += 1
        replicas[name] = await asyncio.create_subprocess_exec(
            *servers.worker("transcribe", "--consumer", name, "--heartbeat-s", str(HEARTBEAT_S)),
            env={**os.environ, **env},
            stderr=asyncio.subprocess.DEVNULL,
        )

    redis = aioredis.Redis.from_url(args.redis_url)

    async def owners() -> dict[str, str]:
        """call id → the consumer holding its `started` entry."""
        rows = await redis.xpending_range(settings.keys.calls, group, "-", "+", 100)
        by_entry = {row["message_id"]: cast(bytes, row["consumer"]).decode() for row in rows}
        entries = cast(StreamEntries, await redis.xrange(settings.keys.calls))
        return {
            fields[b"call_id"].decode(): by_entry[entry_id]
            for entry_id, fields in entries
            if entry_id in by_entry
        }

    ids = [f"soak-{i}" for i in range(args.calls)]
    actions: list[dict[str, Any]] = []
    argv, port = servers.gateway(env)
    try:
        for _ in range(args.replicas):
            await start_replica()
        async with servers.running("gateway", argv, port, "/healthz", env) as gateway:
            calls = asyncio.create_task(
                simulate(
                    f"ws://127.0.0.1:{gateway.port}/ws", [audio], calls=args.calls, call_ids=ids
                )
            )
            turn = 0
            while not calls.done():
                await asyncio.wait({calls}, timeout=args.every)
                if calls.done():
                    break
                call_id = ids[turn % len(ids)]
                stop = signal.SIGKILL if turn % 2 == 0 else signal.SIGTERM
                turn += 1
                owner = (await owners()).get(call_id)
                if owner is None or owner not in replicas:
                    continue
                process = replicas.pop(owner)
                at = time.monotonic()
                process.send_signal(stop)
                code = await asyncio.wait_for(process.wait(), 30)
                await start_replica()
                took = None
                while time.monotonic() - at < 30:
                    now_owner = (await owners()).get(call_id)
                    if now_owner is not None and now_owner != owner:
                        took = time.monotonic() - at
                        break
                    await asyncio.sleep(0.05)
                actions.append(
                    {"call": call_id, "signal": stop.name, "exit": code, "takeover_s": took}
                )
                print(f"  {stop.name} {owner} ({call_id}): exit {code}, taken over in {took} s")
            results = await calls
            deadline = time.monotonic() + 120
            while await redis.xpending_range(settings.keys.calls, group, "-", "+", 10):
                if time.monotonic() > deadline:
                    raise SystemExit("the replicas did not finish the calls in 120 s")
                await asyncio.sleep(0.2)
        per_call = []
        for call_id, result in zip(ids, results, strict=True):
            raw = cast(StreamEntries, await redis.xrange(settings.keys.call_events(call_id)))
            got = final_texts([Event.from_fields(fields) for _, fields in raw])
            per_call.append(
                {
                    "call": call_id,
                    "completed": result.completed,
                    "expected": len(reference),
                    "same_text": sum(got.get(k) == v for k, v in reference.items()),
                    "missing": sum(k not in got for k in reference),
                    "unexpected": sum(k not in reference for k in got),
                    "two_texts": sum(len(v) > 1 for v in got.values()),
                    "differences": [
                        {
                            "id": k,
                            "offline": sorted(reference.get(k, ())),
                            "streamed": sorted(got.get(k, ())),
                        }
                        for k in sorted(reference.keys() | got.keys())
                        if got.get(k) != reference.get(k)
                    ],
                }
            )
    finally:
        for process in replicas.values():
            if process.returncode is None:
                process.kill()
                await process.wait()
        await redis.aclose()
        await cleanup(args.redis_url, prefix)
    takeovers = [a["takeover_s"] for a in actions if a["takeover_s"] is not None]
    return {
        "calls": args.calls,
        "seconds": args.seconds,
        "replicas": args.replicas,
        "actions": actions,
        "takeover_s_max": max(takeovers, default=None),
        "sigterm_exit_codes": sorted({a["exit"] for a in actions if a["signal"] == "SIGTERM"}),
        "per_call": per_call,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each call")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--every", type=float, default=7.0, help="seconds between two stops")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    parser.add_argument("--json", default=None, help="also write the results to this file")


def main(args: argparse.Namespace) -> int:
    results = asyncio.run(soak(args))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")
    # Every utterance finalised exactly once. Texts after a takeover may differ from the
    # uninterrupted decode (the new recogniser starts without the old one's adaptation).
    clean = all(
        c["completed"] and not (c["missing"] or c["unexpected"] or c["two_texts"])
        for c in results["per_call"]
    )
    return 0 if clean else 1
