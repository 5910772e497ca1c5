"""The fleet analytics' logic (workers/kafka/analytics.py), without Kafka or Faust: facts from
events, the calls' state and its sweep, the windows' figures and the records published."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.shared.catalogue import validate
from callstream.shared.events import Event, iso_time
from callstream.workers.kafka import analytics
from callstream.workers.kafka.analytics import (
    ENDED,
    INTENT,
    LOST,
    MINUTE_MS,
    SENTIMENT,
    STARTED,
    UNLABELLED,
    Aggregator,
    CallState,
    Fact,
    GroupState,
    Labeller,
    MemoryWindows,
    Stats,
    minute_start,
    observe,
    record,
    record_key,
    reference,
    rolling_end,
    rolling_starts,
    sweep,
    without_live_fields,
)
from tests.helpers import example_event

T0 = 1_764_576_000_000  # 2025-12-01T08:00:00Z, a minute's start
S = 1000  # ms


def at(event: Event, offset_ms: int) -> Event:
    return dataclasses.replace(event, time_ms=T0 + offset_ms)


def started(call: str, offset_ms: int, **labels: str) -> Event:
    return at(example_event(call, "call.started", **labels), offset_ms)


def ended(call: str, offset_ms: int) -> Event:
    return at(example_event(call, "call.ended"), offset_ms)


def utterance(call: str, onset: int) -> str:
    return f"{call}:transcript:0:{onset}"


def sentiment(call: str, offset_ms: int, score: float, onset: int | None = None) -> Event:
    onset = offset_ms if onset is None else onset
    event = example_event(
        call,
        "nlp.sentiment",
        key=f"0:{onset}",
        utterance=utterance(call, onset),
        score=score,
        label="negative" if score < -0.05 else "positive" if score > 0.05 else "neutral",
        rolling=score,
    )
    return at(event, offset_ms)


def intent(call: str, offset_ms: int, name: str, onset: int | None = None) -> Event:
    onset = offset_ms if onset is None else onset
    event = example_event(
        call, "nlp.intent", key=f"0:{onset}:{name}", utterance=utterance(call, onset), name=name
    )
    return at(event, offset_ms)


def done(call: str, offset_ms: int, reason: str = "normal", kind: str = "transcribe") -> Event:
    return at(example_event(call, f"{kind}.done", kind=kind, reason=reason), offset_ms)


def fact(kind: str, offset_ms: int, group: str = "acme/billing", **fields: Any) -> Fact:
    tenant, queue = group.split("/")
    return Fact(kind, tenant, queue, T0 + offset_ms, f"c:{kind}:{offset_ms}", "c", **fields)


# --------------------------------------------------------------------------- windows


def test_minutes_and_five_minute_windows_are_by_event_time() -> None:
    assert minute_start(T0) == T0
    assert minute_start(T0 + 59_999) == T0
    assert minute_start(T0 + 60_000) == T0 + MINUTE_MS
    assert rolling_starts(T0 + 61_000) == [T0 + k * MINUTE_MS for k in range(-3, 2)]
    assert rolling_end(T0) == T0 + MINUTE_MS
    assert iso_time(T0) == "2025-12-01T08:00:00.000Z"


# --------------------------------------------------------------------------- the calls


def test_the_examples_used_here_are_valid_events() -> None:
    for event in (
        started("c", 0, tenant="acme"),
        ended("c", 0),
        sentiment("c", 0, -0.5),
        intent("c", 0, "refund"),
        done("c", 0, "inbound_idle"),
    ):
        validate(event.to_json())


def test_a_call_labels_its_facts_with_the_tenant_and_queue_of_its_start() -> None:
    outcome = observe(None, started("c", 5 * S, tenant="acme", queue="billing"), 2)
    assert outcome.state == CallState(
        partition=2, last_ms=T0 + 5 * S, tenant="acme", queue="billing", started_ms=T0 + 5 * S
    )
    assert [(f.kind, f.group, f.active) for f in outcome.facts] == [(STARTED, "acme/billing", 1)]
    state = outcome.state
    outcome = observe(state, sentiment("c", 20 * S, -0.5), 2)
    assert [(f.kind, f.group, f.score) for f in outcome.facts] == [
        (SENTIMENT, "acme/billing", -0.5)
    ]
    outcome = observe(outcome.state, intent("c", 21 * S, "refund"), 2)
    assert [(f.kind, f.intent) for f in outcome.facts] == [(INTENT, "refund")]
    outcome = observe(outcome.state, ended("c", 95 * S), 2)
    (end,) = outcome.facts
    assert (end.kind, end.group, end.active, end.handle_ms) == (ENDED, "acme/billing", -1, 90 * S)
    assert outcome.state is not None
    assert outcome.state.ended
    assert outcome.state.seen == ("nlp.sentiment:0:20000", "nlp.intent:0:21000:refund")


def test_missing_labels_are_a_dash() -> None:
    (fact_,) = observe(None, started("c", 0, tenant="globex"), 0).facts
    assert fact_.group == f"globex/{UNLABELLED}"
    (fact_,) = observe(None, started("c", 0), 0).facts
    assert fact_.group == "-/-"


def test_every_event_counts_once_however_often_it_comes() -> None:
    events = [
        started("c", 0, tenant="acme", queue="billing"),
        sentiment("c", 10 * S, 0.5),
        intent("c", 11 * S, "refund"),
        ended("c", 30 * S),
    ]
    state = None
    facts: list[Fact] = []
    for event in events:
        outcome = observe(state, event, 0)
        state, facts = outcome.state, facts + list(outcome.facts)
        again = observe(state, event, 0)
        assert again == dataclasses.replace(again, state=state, changed=False, facts=())
    assert [f.kind for f in facts] == [STARTED, SENTIMENT, INTENT, ENDED]


def test_insights_before_the_start_wait_for_its_labels() -> None:
    """Insights and lifecycle are two topics: an insight may be read before its call.started."""
    first = observe(None, sentiment("c", 20 * S, -0.25), 1)
    assert first.facts == ()
    assert first.state is not None
    assert first.state.pending[0].score == -0.25
    dup = observe(first.state, sentiment("c", 20 * S, -0.25), 1)
    assert not dup.changed
    outcome = observe(first.state, started("c", 5 * S, tenant="acme", queue="support"), 1)
    assert [(f.kind, f.group) for f in outcome.facts] == [
        (STARTED, "acme/support"),
        (SENTIMENT, "acme/support"),
    ]
    assert outcome.state is not None
    assert outcome.state.pending == ()
    assert outcome.state.last_ms == T0 + 20 * S


def test_an_end_without_a_start_counts_unlabelled_and_changes_no_active_count() -> None:
    """Its call.started is not in Kafka any more (same topic, same partition, before it)."""
    waiting = observe(None, intent("c", 10 * S, "refund"), 0).state
    outcome = observe(waiting, ended("c", 30 * S), 0)
    assert [(f.kind, f.group, f.active, f.handle_ms) for f in outcome.facts] == [
        (INTENT, "-/-", 0, None),
        (ENDED, "-/-", 0, None),
    ]
    late = observe(outcome.state, sentiment("c", 40 * S, 0.1), 0)
    assert [(f.kind, f.group) for f in late.facts] == [(SENTIMENT, "-/-")]


def test_an_inbound_idle_done_ends_a_call_whose_gateway_died() -> None:
    state = observe(None, started("c", 0, tenant="acme"), 0).state
    assert not observe(state, done("c", 50 * S), 0).changed  # a normal .done: not an end
    outcome = observe(state, done("c", 60 * S, "inbound_idle"), 0)
    (end,) = outcome.facts
    assert (end.kind, end.active, end.handle_ms) == (ENDED, -1, None)  # its time is a timeout's
    # The other kinds' .done, or a call.ended after all, do not end it twice.
    assert not observe(outcome.state, done("c", 61 * S, "inbound_idle", "nlp"), 0).changed
    assert not observe(outcome.state, ended("c", 62 * S), 0).changed


def test_other_events_and_unusable_insights_keep_no_state() -> None:
    for event in (
        at(example_event("c", "dtmf"), 0),
        at(example_event("c", "nlp.key_phrases"), 0),
        done("c", 0),
        dataclasses.replace(sentiment("c", 0, 0.1), data={"score": "high"}),
        dataclasses.replace(sentiment("c", 0, 0.1), data={"score": float("nan")}),
        dataclasses.replace(intent("c", 0, "x"), data={"name": ""}),
    ):
        assert observe(None, event, 0) == analytics.Outcome(None, changed=False)


def test_a_call_remembers_its_latest_insight_ids_only() -> None:
    state = observe(None, started("c", 0), 0).state
    for n in range(analytics.SEEN_PER_CALL + 1):
        state = observe(state, sentiment("c", n, 0.1), 0).state
    assert state is not None
    assert len(state.seen) == analytics.SEEN_PER_CALL
    assert observe(state, sentiment("c", 0, 0.1), 0).facts  # forgotten: counted again
    assert not observe(state, sentiment("c", 1, 0.1), 0).changed


def test_insights_waiting_too_long_a_list_are_counted_unlabelled() -> None:
    state = None
    overflow: list[Fact] = []
    for n in range(analytics.PENDING_PER_CALL + 2):
        outcome = observe(state, sentiment("c", n, 0.1), 0)
        state, overflow = outcome.state, overflow + list(outcome.facts)
    assert state is not None
    assert len(state.pending) == analytics.PENDING_PER_CALL
    assert [(f.group, f.time_ms) for f in overflow] == [("-/-", T0), ("-/-", T0 + 1)]


def test_call_state_round_trips_through_its_table_value() -> None:
    state = observe(None, sentiment("c", 0, 0.1), 3).state
    assert state is not None
    assert CallState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    fact_ = fact(ENDED, 0, handle_ms=5)
    assert Fact.from_json(fact_.to_json()) == fact_
    assert b"score" not in fact_.to_json()  # None fields are left out


def test_a_call_is_forgotten_a_while_after_it_ended_and_given_up_after_long_silence() -> None:
    linger, give_up = 15 * MINUTE_MS, 24 * 60 * MINUTE_MS
    live = observe(None, started("c", 0, tenant="acme"), 0).state
    assert live is not None
    assert sweep("c", live, T0 + give_up - 1, linger_ms=linger, give_up_ms=give_up) is None
    gone = sweep("c", live, T0 + give_up, linger_ms=linger, give_up_ms=give_up)
    assert gone is not None
    assert gone.state is None
    assert [(f.kind, f.group, f.active, f.time_ms) for f in gone.facts] == [
        (LOST, "acme/-", -1, T0 + give_up)
    ]
    over = observe(live, ended("c", 10 * S), 0).state
    assert over is not None
    assert sweep("c", over, T0 + 10 * S + linger - 1, linger_ms=linger, give_up_ms=give_up) is None
    forgotten = sweep("c", over, T0 + 10 * S + linger, linger_ms=linger, give_up_ms=give_up)
    assert forgotten == analytics.Outcome(None, changed=True, facts=())
    # Insights whose start never came are counted unlabelled when the call is forgotten.
    orphan = observe(None, intent("c", 0, "refund"), 0).state
    assert orphan is not None
    flushed = sweep("c", orphan, T0 + linger, linger_ms=linger, give_up_ms=give_up)
    assert flushed is not None
    assert [(f.kind, f.group) for f in flushed.facts] == [(INTENT, "-/-")]


def test_the_labeller_sweeps_a_partition_each_minute_of_its_event_time() -> None:
    store: dict[str, Any] = {}
    labeller = Labeller(store, linger=timedelta(minutes=2), give_up=timedelta(hours=1))
    labeller.feed(started("a", 0, tenant="acme"), 0)
    labeller.feed(ended("a", 10 * S), 0)
    labeller.feed(started("b", 0, tenant="acme"), 1)
    labeller.feed(ended("b", 10 * S), 1)
    assert set(store) == {"a", "b"}
    # Partition 0 reaches two minutes after a's end: a is forgotten; b, in partition 1, not.
    assert labeller.feed(done("a", 130 * S), 0) == []
    assert set(store) == {"b"}
    # An hour without events: a call that never ended is no longer counted in progress.
    labeller.feed(started("c", 200 * S, tenant="acme"), 1)
    facts = labeller.feed(done("x", 200 * S + 3600 * S), 1)
    assert [(f.kind, f.call_id, f.event_id, f.active) for f in facts] == [(LOST, "c", "c:lost", -1)]
    assert store == {}


# --------------------------------------------------------------------------- the figures


def test_stats_count_calls_sentiment_intents_and_handle_time() -> None:
    stats = Stats()
    for f in (
        fact(STARTED, 0, active=1),
        fact(STARTED, 1, active=1),
        fact(SENTIMENT, 2, score=-0.5),
        fact(SENTIMENT, 3, score=0.25),
        fact(SENTIMENT, 4, score=0.3333),
        fact(INTENT, 5, intent="refund"),
        fact(INTENT, 6, intent="billing"),
        fact(INTENT, 7, intent="refund"),
        fact(ENDED, 8, active=-1, handle_ms=90_000),
        fact(ENDED, 9, active=-1, handle_ms=120_500),
        fact(ENDED, 10, active=-1),  # an idle end: no handle time
        fact(LOST, 11, active=-1),  # not in a window's figures
    ):
        stats = stats.add(f)
    assert stats.published() == {
        "started": 2,
        "ended": 3,
        "sentiment": {"count": 3, "sum": 0.0833, "mean": 0.0278},
        "handle_time_s": {"count": 2, "sum": 210.5, "mean": 105.25},
        "intents": {"refund": 2, "billing": 1},
    }
    assert Stats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    assert Stats.from_dict({}) == Stats() == Stats.from_dict(None)
    assert Stats().published()["sentiment"] == {"count": 0, "sum": 0.0, "mean": None}


scores = st.floats(min_value=-1, max_value=1).map(lambda x: round(x, 4))


@given(st.lists(scores, max_size=40), st.randoms())
def test_figures_do_not_depend_on_the_order_of_the_facts(
    values: list[float], rnd: random.Random
) -> None:
    facts = [fact(SENTIMENT, n, score=v) for n, v in enumerate(values)]
    facts += [fact(ENDED, n, handle_ms=n * 1001) for n in range(len(values) % 7)]
    shuffled = list(facts)
    rnd.shuffle(shuffled)
    one, two = Stats(), Stats()
    for a, b in zip(facts, shuffled, strict=True):
        one, two = one.add(a), two.add(b)
    assert one.published() == two.published()


def test_a_record_carries_the_minute_the_five_minutes_up_to_its_end_and_active_calls() -> None:
    minute = Stats().add(fact(STARTED, 0)).add(fact(SENTIMENT, 1, score=-0.5))
    rolling = minute.add(fact(ENDED, -120 * S, handle_ms=30_000))
    value = record(
        "acme",
        "billing",
        T0,
        minute=minute,
        rolling=rolling,
        group=GroupState(active=4, version=17),
    )
    assert record_key("acme/billing", T0) == "acme/billing/2025-12-01T08:00:00.000Z"
    assert value == {
        "v": 1,
        "tenant": "acme",
        "queue": "billing",
        "window": {"start": "2025-12-01T08:00:00.000Z", "end": "2025-12-01T08:01:00.000Z"},
        "active": 4,
        "started": 1,
        "ended": 0,
        "sentiment": {"count": 1, "sum": -0.5, "mean": -0.5},
        "handle_time_s": {"count": 0, "sum": 0.0, "mean": None},
        "intents": {},
        "rolling": {
            "window": {"start": "2025-12-01T07:56:00.000Z", "end": "2025-12-01T08:01:00.000Z"},
            "started": 1,
            "ended": 1,
            "sentiment": {"count": 1, "sum": -0.5, "mean": -0.5},
            "handle_time_s": {"count": 1, "sum": 30.0, "mean": 30.0},
            "intents": {},
        },
        "version": 17,
    }
    assert without_live_fields(value) == {
        k: v for k, v in value.items() if k not in ("active", "version")
    }
    assert json.loads(analytics.encode_record(value)) == value


def aggregator(now_ms: int = T0 + 10 * MINUTE_MS) -> tuple[Aggregator, dict[str, Any]]:
    groups: dict[str, Any] = {}
    return Aggregator(MemoryWindows(), groups, clock=lambda: now_ms / 1000), groups


def test_each_fact_publishes_its_minute_with_the_active_calls_and_a_version() -> None:
    agg, groups = aggregator()
    ((key, value),) = agg.apply(fact(STARTED, 5 * S, active=1))
    assert key == f"acme/billing/{iso_time(T0)}"
    assert (value["started"], value["active"], value["version"]) == (1, 1, 1)
    ((key, value),) = agg.apply(fact(ENDED, 65 * S, active=-1, handle_ms=60_000))
    assert key == f"acme/billing/{iso_time(T0 + MINUTE_MS)}"
    assert (value["started"], value["ended"], value["active"], value["version"]) == (0, 1, 0, 2)
    assert (value["rolling"]["started"], value["rolling"]["ended"]) == (1, 1)
    assert groups == {"acme/billing": {"active": 0, "version": 2}}


def test_a_late_fact_republishes_the_later_minutes_whose_five_minutes_hold_it() -> None:
    agg, _ = aggregator()
    agg.apply(fact(STARTED, 0, active=1))
    agg.apply(fact(STARTED, 2 * MINUTE_MS, active=1))
    agg.apply(fact(STARTED, 6 * MINUTE_MS, active=1))
    published = agg.apply(fact(SENTIMENT, 10 * S, score=0.5))  # minute 0, read late
    # Minute 0's record, and minute 2's (its five minutes hold minute 0); minute 6's do not,
    # and minutes 1, 3 and 4 have no figures: no record.
    assert [(key, v["rolling"]["sentiment"]["count"]) for key, v in published] == [
        (f"acme/billing/{iso_time(T0)}", 1),
        (f"acme/billing/{iso_time(T0 + 2 * MINUTE_MS)}", 1),
    ]
    assert published[1][1]["sentiment"]["count"] == 0  # its own minute has none


def test_a_lost_call_publishes_its_minute_with_one_call_less_in_progress() -> None:
    agg, groups = aggregator()
    agg.apply(fact(STARTED, 0, active=1))
    ((key, value),) = agg.apply(fact(LOST, 3 * MINUTE_MS, active=-1))
    assert key == f"acme/billing/{iso_time(T0 + 3 * MINUTE_MS)}"
    assert (value["started"], value["ended"], value["active"]) == (0, 0, 0)
    assert value["rolling"]["started"] == 1
    assert groups == {"acme/billing": {"active": 0, "version": 2}}


def test_facts_older_than_the_windows_keep_are_dropped_but_change_active_calls() -> None:
    agg, groups = aggregator(now_ms=T0 + 3 * 60 * MINUTE_MS)  # three hours later
    assert agg.apply(fact(STARTED, 0, active=1)) == []
    assert agg.late == 1
    assert groups == {"acme/billing": {"active": 1, "version": 1}}
    assert agg.apply(fact(STARTED, 2 * 60 * MINUTE_MS, active=1))  # an hour ago: kept


# --------------------------------------------------------------------------- the reference


def scenario() -> list[Event]:
    """Four calls over three minutes, with duplicates, in the order their publishers made
    them."""
    return [
        started("a", 5 * S, tenant="acme", queue="billing"),
        started("b", 30 * S, tenant="acme", queue="billing"),
        sentiment("a", 20 * S, -0.5),
        sentiment("a", 20 * S, -0.5),  # a duplicate
        intent("a", 21 * S, "billing_question"),
        intent("b", 40 * S, "billing_question"),
        intent("b", 41 * S, "cancel"),
        started("c", 50 * S, tenant="acme", queue="support"),
        started("c", 50 * S, tenant="acme", queue="support"),  # a duplicate
        sentiment("c", 61 * S, -0.1),
        sentiment("a", 70 * S, 0.25),
        ended("a", 95 * S),
        sentiment("b", 130 * S, 0.8),
        ended("b", 150 * S),
        ended("b", 150 * S),  # a duplicate
        started("d", 100 * S, tenant="globex"),
        intent("d", 110 * S, "refund"),
        done("d", 200 * S, "inbound_idle"),
    ]


def test_the_reference_figures_by_hand() -> None:
    latest, groups = reference(scenario())
    billing = [latest[record_key("acme/billing", T0 + k * MINUTE_MS)] for k in range(3)]
    assert [(r["started"], r["ended"]) for r in billing] == [(2, 0), (0, 1), (0, 1)]
    assert billing[0]["sentiment"] == {"count": 1, "sum": -0.5, "mean": -0.5}  # once
    assert billing[0]["intents"] == {"billing_question": 2, "cancel": 1}
    assert billing[1]["handle_time_s"] == {"count": 1, "sum": 90.0, "mean": 90.0}
    assert billing[2]["handle_time_s"] == {"count": 1, "sum": 120.0, "mean": 120.0}
    assert billing[2]["rolling"]["sentiment"] == {"count": 3, "sum": 0.55, "mean": 0.1833}
    assert billing[2]["rolling"]["handle_time_s"]["mean"] == 105.0
    support = latest[record_key("acme/support", T0 + MINUTE_MS)]
    assert (support["sentiment"]["mean"], support["rolling"]["started"]) == (-0.1, 1)
    globex = latest[record_key("globex/-", T0 + 3 * MINUTE_MS)]
    assert (globex["ended"], globex["handle_time_s"]["count"]) == (1, 0)
    assert groups == {
        "acme/billing": GroupState(active=0, version=10),
        "acme/support": GroupState(active=1, version=2),
        "globex/-": GroupState(active=0, version=3),
    }
    assert sorted(latest) == sorted(
        [record_key("acme/billing", T0 + k * MINUTE_MS) for k in (0, 1, 2)]
        + [record_key("acme/support", T0 + k * MINUTE_MS) for k in (0, 1)]
        + [record_key("globex/-", T0 + k * MINUTE_MS) for k in (1, 3)]
    )


@pytest.mark.parametrize("seed", range(20))
def test_the_figures_do_not_depend_on_how_calls_and_topics_interleave(seed: int) -> None:
    """Each call's lifecycle events stay in order, and so do its insights (one partition of
    each topic), but the two topics, and different calls, interleave any way."""
    events = scenario()
    expected, expected_groups = reference(events)
    rnd = random.Random(seed)
    queues: dict[tuple[str, bool], list[Event]] = {}
    for event in events:
        queues.setdefault((event.call_id, event.type.startswith("nlp.")), []).append(event)
    mixed: list[Event] = []
    while queues:
        key = rnd.choice(sorted(queues))
        mixed.append(queues[key].pop(0))
        if not queues[key]:
            del queues[key]
    latest, groups = reference(mixed)
    assert {k: without_live_fields(v) for k, v in latest.items()} == {
        k: without_live_fields(v) for k, v in expected.items()
    }
    assert {g: s.active for g, s in groups.items()} == {
        g: s.active for g, s in expected_groups.items()
    }
