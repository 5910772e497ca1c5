"""Call insights end to end: a scripted call, spoken by Piper at test time, through a gateway, a
transcribe worker and two nlp workers (real processes, real Redis), in redaction mode; the nlp
replica that owns the call is SIGKILLed mid-call."""

from __future__ import annotations

import asyncio
import collections
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.simulate import participant_ids, simulate
from callstream.speech import piper_available, say
from tests.helpers import events, gateway_process, wait_for_event, worker_process

RATE = 16000
CARD_WORDS = "four one one one one one one one one one one one one one one one"
SCRIPT = (  # (speaker, text): 0 the caller, 1 the agent
    (0, "this is the worst service i have ever had and i am really angry about it"),
    (1, "i am sorry to hear that how can i help you today"),
    (0, f"my card number is {CARD_WORDS}"),
    (1, "thank you"),
    (0, "i want to cancel my subscription"),
)


def tracks(rate_hz: int) -> list[bytes]:
    """The script read aloud: one track per speaker, silent while the other speaks."""
    clips = [(who, say(text, rate_hz)) for who, text in SCRIPT]
    lead, gap, tail = (int(rate_hz * s) * 2 for s in (0.5, 1.0, 1.5))
    total = lead + sum(len(c) for _, c in clips) + gap * (len(clips) - 1) + tail
    out = [bytearray(total), bytearray(total)]
    at = lead
    for who, clip in clips:
        out[who][at : at + len(clip)] = clip
        at += len(clip) + gap
    return [bytes(track) for track in out]


async def owner(redis: aioredis.Redis, settings: Settings, kind: str) -> str | None:
    try:
        rows = await redis.xpending_range(
            settings.keys.calls, settings.keys.group(kind), "-", "+", 10
        )
    except ResponseError:
        return None
    if not rows:
        return None
    consumer = rows[0]["consumer"]
    return consumer.decode() if isinstance(consumer, bytes) else str(consumer)


def of(found: list[Event], event_type: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in found if e.type == event_type]


@pytest.mark.timeout(240)
async def test_a_call_yields_its_insights_redacted_once_each_across_a_replica_kill(
    settings: Settings, redis: aioredis.Redis
) -> None:
    assert piper_available(), "Piper is needed (./dev installs the speech extra)"
    talkers = await asyncio.to_thread(tracks, RATE)
    caller, agent = participant_ids(2)
    env = {"CS_REDACT": "1"}
    nlp_args = ("--heartbeat-s", "0.3")
    async with (
        gateway_process(settings, env=env) as url,
        worker_process(settings, "transcribe", env=env),
        worker_process(settings, "nlp", "--consumer", "nlp-a", *nlp_args, env=env) as nlp_a,
        worker_process(settings, "nlp", "--consumer", "nlp-b", *nlp_args, env=env) as nlp_b,
    ):
        call = asyncio.create_task(
            simulate(
                url,
                talkers,
                rate_hz=RATE,
                mode="unmixed",
                call_ids=["insights"],
                dtmf=[("7", 2.0)],
            )
        )
        events_key = settings.keys.call_events("insights")
        await wait_for_event(redis, events_key, "nlp.sentiment", 60)
        name = await owner(redis, settings, "nlp")
        assert name in {"nlp-a", "nlp-b"}
        victim = nlp_a if name == "nlp-a" else nlp_b
        victim.send_signal(signal.SIGKILL)  # mid-call: the other replica takes over
        await victim.wait()
        [result] = await call
        assert result.error is None
        await wait_for_event(redis, events_key, "nlp.done", 90)

    mine = await events(redis, events_key)
    insights = [e for e in await events(redis, settings.keys.insights) if e.call_id == "insights"]
    # Nothing twice, nothing lost: every event id once on each stream, the same ones.
    for stream in (mine, insights):
        counts = collections.Counter(e.id for e in stream)
        assert [i for i, n in counts.items() if n > 1] == []
    private = {e.id for e in mine if e.type == "dtmf" or ":partial:" in e.id}
    assert {e.id for e in mine} - private == {e.id for e in insights}
    finals = [e for e in mine if e.type == "transcript" and e.data["resultStatus"] == "Final"]
    sentiment = {s["utterance"]: s for s in of(mine, "nlp.sentiment")}
    assert set(sentiment) == {e.id for e in finals}  # one per final, none lost at the kill
    # The caller's utterances in the order said (found by position, not by words the
    # recogniser may mishear): the complaint, the card number, the cancellation.
    said = sorted(
        (e for e in finals if e.data["participantRawID"] == caller), key=lambda e: e.data["offset"]
    )
    complaint, cancel = said[0], said[-1]
    card = max(said, key=lambda e: e.data["text"].split().count("one"))
    assert sentiment[complaint.id]["label"] == "negative"
    assert sentiment[complaint.id]["participant"] == caller
    # The card number: found, redacted on cs:insights, the original on the call's stream only.
    assert "one one one one one one" in card.data["text"]  # the original, on the call's stream
    [pii] = [p for p in of(mine, "nlp.pii") if p["utterance"] == card.id]
    # A card (Luhn-valid) as said; should the recogniser mishear its first digit, the rest is
    # still a run of fifteen digits, redacted all the same.
    [found] = pii["entities"]
    assert found["type"] in {"card_number", "digits"}
    assert pii["redacted_text"].endswith(f"[{found['type'].upper()}]")
    public = [e for e in insights if e.type == "transcript"]
    assert public
    assert all(e.data.get("redacted") for e in public)
    assert {e.data["resultStatus"] for e in public} == {"Final"}  # partials stay private
    assert not any("one one one one" in e.data["text"] for e in public)
    assert [e.data["text"] for e in public if e.id == card.id] == [pii["redacted_text"]]
    assert not [e for e in insights if e.type == "dtmf"]  # keys pressed stay off cs:insights
    # The cancellation.
    assert "cancel_subscription" in [
        i["name"] for i in of(mine, "nlp.intent") if i["utterance"] == cancel.id
    ]
    # The summary, once, after the last transcript, then nlp.done.
    types = [e.type for e in mine]
    assert types.count("nlp.summary") == 1
    assert types.index("nlp.summary") > types.index("transcribe.done")
    assert types.index("nlp.done") > types.index("nlp.summary")
    [summary] = of(mine, "nlp.summary")
    assert set(summary["participants"]) == {caller, agent}
    assert summary["participants"][caller]["turns"] == 3
    assert summary["participants"][agent]["turns"] == 2
    assert summary["participants"][caller]["mean_sentiment"] < 0
    assert summary["utterances"] == len(finals)
    assert "cancel_subscription" in [i["name"] for i in summary["intents"]]
    assert (summary["dtmf"], summary["dtmf_count"]) == (None, 1)  # redaction mode: how many
    assert 0 < summary["silence_ratio"] < 1
