"""Fleet analytics in Faust: per tenant/queue and minute of event time — calls started, ended
and in progress, mean sentiment, intent counts, mean handle time — and the same over the last
five minutes, published to ``{prefix}.analytics`` (docs/kafka.md, "Analytics").

Two agents, two hops:

1. **calls** reads the ``lifecycle`` and ``insights`` topics (both keyed by call id, with the
   same number of partitions, so one call's events of both are in the same partition number)
   and keeps a table of calls: their labels (tenant and queue come on ``call.started`` only),
   start time, whether they ended, the ids of the insights already counted (the bridge
   delivers at least once: a duplicate changes nothing) and the insights that came before
   their ``call.started`` (another topic: nothing orders the two), which wait for its labels.
   Each event that counts becomes a :class:`Fact`, sent to an internal topic keyed by
   ``tenant/queue``.
2. **groups** reads the facts and keeps, per ``tenant/queue``, a tumbling window of one minute
   and a hopping window of five minutes that advances by one (both by the fact's event time,
   kept for ``keep`` plus a margin), and a plain table of the calls in progress. After each
   fact it publishes the record of the fact's minute (and, for a fact that came late, of the
   four minutes after it whose five-minute figures it changed), keyed
   ``tenant/queue/minute-start``: the latest record of a key is that minute's figures.

The logic is pure (:class:`Labeller`, :class:`Aggregator`, :class:`Stats`, :func:`record`) and
runs in the agents over Faust's tables, or over dicts in the tests; :func:`install` puts it on
a Faust app.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from typing import Any, Protocol

import faust
from faust.types import AgentT, EventT, StreamT, TableT, TopicT
from faust.types.tables import WindowWrapperT

from callstream.shared.catalogue import (
    CALL_ENDED,
    CALL_STARTED,
    NLP_INTENT,
    NLP_SENTIMENT,
    done_kind,
)
from callstream.shared.errors import EventError
from callstream.shared.events import Event, iso_time
from callstream.workers.kafka import topics
from callstream.workers.kafka.config import KafkaConfig

log = logging.getLogger(__name__)

RECORD_VERSION = 1  # "v" of the records published
MINUTE_MS = 60_000
ROLLING_MINUTES = 5
ROLLING_MS = ROLLING_MINUTES * MINUTE_MS
UNLABELLED = "-"  # a call without ?tenant= or ?queue= (no label can be "-": they start alnum)
IDLE_REASON = "inbound_idle"  # {kind}.done of a call whose gateway died: no call.ended comes

SEEN_PER_CALL = 128  # insight ids remembered per call (duplicates come within seconds)
PENDING_PER_CALL = 256  # insights that wait for their call.started, at most
LINGER = timedelta(minutes=15)  # an ended call is forgotten this long after its last event
GIVE_UP = timedelta(hours=24)  # a call never ended is given up after this long without events
SWEEP_EVERY = timedelta(minutes=1)  # of event time, per partition
KEEP = timedelta(hours=2)  # windows take facts this old at most (wall clock); older: dropped
EXPIRY_MARGIN = timedelta(minutes=10)  # windows are kept this much longer than KEEP

# Kinds of facts.
STARTED = "started"
ENDED = "ended"
SENTIMENT = "sentiment"
INTENT = "intent"
LOST = "lost"  # a call given up (GIVE_UP): no longer in progress, not counted as ended
WINDOWED = frozenset({STARTED, ENDED, SENTIMENT, INTENT})  # the kinds windows count


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)


# --------------------------------------------------------------------------- windows


def minute_start(time_ms: int) -> int:
    """The start of the minute (UTC, epoch ms) holding ``time_ms``."""
    return time_ms // MINUTE_MS * MINUTE_MS


def rolling_starts(time_ms: int) -> list[int]:
    """The starts of the five-minute windows, a minute apart, that hold ``time_ms``."""
    last = minute_start(time_ms)
    return [last - k * MINUTE_MS for k in range(ROLLING_MINUTES - 1, -1, -1)]


def rolling_end(minute_start_ms: int) -> int:
    """The end of the five-minute window reported with a minute: the minute's end."""
    return minute_start_ms + MINUTE_MS


# --------------------------------------------------------------------------- facts


def group_of(tenant: str, queue: str) -> str:
    return f"{tenant}/{queue}"


@dataclass(frozen=True, slots=True)
class Fact:
    """What one event contributes to its tenant/queue's figures.

    ``active`` is its change to the calls in progress: +1 for a start, -1 for the end (or the
    loss) of a call whose start was counted, 0 otherwise. ``handle_ms``: from ``call.started``
    to ``call.ended``, on an end whose start was seen (not on an end by ``inbound_idle``, whose
    time is the workers', a timeout after the call's last audio)."""

    kind: str
    tenant: str
    queue: str
    time_ms: int
    event_id: str
    call_id: str
    active: int = 0
    score: float | None = None
    intent: str | None = None
    handle_ms: int | None = None

    @property
    def group(self) -> str:
        return group_of(self.tenant, self.queue)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Fact:
        return cls(**{name: obj[name] for name in _FACT_FIELDS if name in obj})

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Fact:
        return cls.from_dict(json.loads(raw))


_FACT_FIELDS = tuple(Fact.__dataclass_fields__)


def _label(value: object) -> str:
    return value if isinstance(value, str) and value else UNLABELLED


def _score(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and -1.0 <= number <= 1.0 else None


# --------------------------------------------------------------------------- calls (agent 1)


@dataclass(frozen=True, slots=True)
class CallState:
    """What the calls agent keeps of one call (the value of its table, as a dict).

    ``started_ms`` is None until ``call.started``, which gives the labels ``tenant`` and
    ``queue`` (:data:`UNLABELLED` until then, or without them); ``seen`` holds the
    insights counted (their ids without the call id), newest last; ``pending`` the insights
    that came before ``call.started``; ``partition``: its table partition (for the sweep)."""

    partition: int
    last_ms: int
    tenant: str = UNLABELLED
    queue: str = UNLABELLED
    started_ms: int | None = None
    ended: bool = False
    seen: tuple[str, ...] = ()
    pending: tuple[Fact, ...] = ()

    @property
    def started(self) -> bool:
        return self.started_ms is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "last_ms": self.last_ms,
            "tenant": self.tenant,
            "queue": self.queue,
            "started_ms": self.started_ms,
            "ended": self.ended,
            "seen": list(self.seen),
            "pending": [fact.to_dict() for fact in self.pending],
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> CallState:
        return cls(
            partition=int(obj["partition"]),
            last_ms=int(obj["last_ms"]),
            tenant=str(obj.get("tenant", UNLABELLED)),
            queue=str(obj.get("queue", UNLABELLED)),
            started_ms=obj.get("started_ms"),
            ended=bool(obj.get("ended")),
            seen=tuple(obj.get("seen", ())),
            pending=tuple(Fact.from_dict(f) for f in obj.get("pending", ())),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """A call's state after one event (None: none is kept) and the facts it gave."""

    state: CallState | None
    changed: bool
    facts: tuple[Fact, ...] = ()


def _short_id(event: Event) -> str:
    prefix = f"{event.call_id}:"
    return event.id[len(prefix) :] if event.id.startswith(prefix) else event.id


def _labelled(facts: Iterable[Fact], tenant: str, queue: str) -> tuple[Fact, ...]:
    return tuple(replace(fact, tenant=tenant, queue=queue) for fact in facts)


def observe(state: CallState | None, event: Event, partition: int) -> Outcome:
    """One event of a call (``state``, None if none is kept): its new state and its facts.

    Idempotent per event: a second ``call.started`` or ``call.ended`` of a call, or an insight
    whose id was counted, changes nothing."""
    kind = event.type
    if kind == CALL_STARTED:
        return _started(state, event, partition)
    if kind == CALL_ENDED:
        return _ended(state, event, partition, idle=False)
    if kind in (NLP_SENTIMENT, NLP_INTENT):
        return _insight(state, event, partition)
    if done_kind(kind) is not None and event.data.get("reason") == IDLE_REASON:
        return _ended(state, event, partition, idle=True)
    return Outcome(state, changed=False)


def _started(state: CallState | None, event: Event, partition: int) -> Outcome:
    if state is not None and state.started:
        return Outcome(state, changed=False)  # a duplicate
    tenant, queue = _label(event.data.get("tenant")), _label(event.data.get("queue"))
    ended = state is not None and state.ended  # its end came first (it cannot, in order)
    started = Fact(
        STARTED,
        tenant,
        queue,
        event.time_ms,
        event.id,
        event.call_id,
        active=0 if ended else 1,
    )
    waiting = state.pending if state is not None else ()
    new = CallState(
        partition=partition,
        last_ms=max(event.time_ms, state.last_ms if state is not None else event.time_ms),
        tenant=tenant,
        queue=queue,
        started_ms=event.time_ms,
        ended=ended,
        seen=state.seen if state is not None else (),
    )
    return Outcome(new, changed=True, facts=(started, *_labelled(waiting, tenant, queue)))


def _ended(state: CallState | None, event: Event, partition: int, *, idle: bool) -> Outcome:
    if state is not None and state.ended:
        return Outcome(state, changed=False)  # a duplicate, or call.ended after an idle end
    if state is not None and state.started_ms is not None:
        tenant, queue = state.tenant, state.queue
        handle = None if idle else max(event.time_ms - state.started_ms, 0)
        active = -1
    else:  # its call.started was never seen (before what Kafka still held): none will come
        tenant, queue, handle, active = UNLABELLED, UNLABELLED, None, 0
    ended = Fact(
        ENDED,
        tenant,
        queue,
        event.time_ms,
        event.id,
        event.call_id,
        active=active,
        handle_ms=handle,
    )
    waiting = _labelled(state.pending, tenant, queue) if state is not None else ()
    base = state if state is not None else CallState(partition, event.time_ms)
    new = replace(base, last_ms=max(base.last_ms, event.time_ms), ended=True, pending=())
    return Outcome(new, changed=True, facts=(*waiting, ended))


def _insight(state: CallState | None, event: Event, partition: int) -> Outcome:
    short = _short_id(event)
    if state is not None and short in state.seen:
        return Outcome(state, changed=False)  # a duplicate
    if event.type == NLP_SENTIMENT:
        score = _score(event.data.get("score"))
        if score is None:
            return Outcome(state, changed=False)
        fact = Fact(SENTIMENT, UNLABELLED, UNLABELLED, event.time_ms, event.id, event.call_id)
        fact = replace(fact, score=score)
    else:
        name = event.data.get("name")
        if not isinstance(name, str) or not name:
            return Outcome(state, changed=False)
        fact = Fact(INTENT, UNLABELLED, UNLABELLED, event.time_ms, event.id, event.call_id)
        fact = replace(fact, intent=name)
    base = state if state is not None else CallState(partition, event.time_ms)
    seen = (*base.seen, short)[-SEEN_PER_CALL:]
    last_ms = max(base.last_ms, event.time_ms)
    if base.started:
        facts: tuple[Fact, ...] = (replace(fact, tenant=base.tenant, queue=base.queue),)
        return Outcome(replace(base, seen=seen, last_ms=last_ms), changed=True, facts=facts)
    if base.ended:  # ended without a start: no labels will come
        return Outcome(replace(base, seen=seen, last_ms=last_ms), changed=True, facts=(fact,))
    pending = (*base.pending, fact)
    overflow = pending[:-PENDING_PER_CALL]  # counted unlabelled rather than kept forever
    new = replace(base, seen=seen, last_ms=last_ms, pending=pending[-PENDING_PER_CALL:])
    return Outcome(new, changed=True, facts=overflow)


def sweep(
    call_id: str, state: CallState, now_ms: int, *, linger_ms: int, give_up_ms: int
) -> Outcome | None:
    """Whether a call is forgotten at ``now_ms`` (its partition's latest event time): an ended
    call, or one whose start never came, ``linger_ms`` after its last event (its insights that
    still wait for a start are then counted unlabelled); a call that started and never ended,
    ``give_up_ms`` after its last event (a :data:`LOST` fact: no longer in progress). None:
    kept."""
    quiet = now_ms - state.last_ms
    if state.started and not state.ended:
        if quiet < give_up_ms:
            return None
        lost = Fact(LOST, state.tenant, state.queue, now_ms, f"{call_id}:lost", call_id, active=-1)
        return Outcome(None, changed=True, facts=(lost,))
    if quiet < linger_ms:
        return None
    return Outcome(None, changed=True, facts=state.pending)


class Labeller:
    """The calls agent's logic over ``store`` (call id -> :meth:`CallState.to_dict`): a dict,
    or the agent's Faust table (inside its stream iteration)."""

    def __init__(
        self,
        store: MutableMapping[str, Any],
        *,
        linger: timedelta = LINGER,
        give_up: timedelta = GIVE_UP,
        sweep_every: timedelta = SWEEP_EVERY,
    ) -> None:
        self.store = store
        self._linger_ms = _ms(linger)
        self._give_up_ms = _ms(give_up)
        self._sweep_every_ms = _ms(sweep_every)
        self._now: dict[int, int] = {}  # partition -> the latest event time seen in it
        self._next_sweep: dict[int, int] = {}

    def feed(self, event: Event, partition: int) -> list[Fact]:
        """One event read from ``partition``: the facts to send, in order."""
        now = max(self._now.get(partition, event.time_ms), event.time_ms)
        self._now[partition] = now
        raw = self.store.get(event.call_id)
        outcome = observe(CallState.from_dict(raw) if raw is not None else None, event, partition)
        if outcome.changed:
            if outcome.state is None:
                self.store.pop(event.call_id, None)
            else:
                self.store[event.call_id] = outcome.state.to_dict()
        facts = list(outcome.facts)
        due = self._next_sweep.setdefault(partition, now + self._sweep_every_ms)
        if now >= due:
            self._next_sweep[partition] = now + self._sweep_every_ms
            facts += self.sweep(partition, now)
        return facts

    def sweep(self, partition: int, now_ms: int) -> list[Fact]:
        """Forget the calls of ``partition`` that are over (:func:`sweep`): their last facts."""
        facts: list[Fact] = []
        for call_id, raw in list(self.store.items()):
            state = CallState.from_dict(raw)
            if state.partition != partition:
                continue
            outcome = sweep(
                call_id, state, now_ms, linger_ms=self._linger_ms, give_up_ms=self._give_up_ms
            )
            if outcome is not None:
                del self.store[call_id]
                facts += outcome.facts
        return facts


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class Stats:
    """One window's figures for one tenant/queue. Sentiment is summed in millionths and
    handle time in milliseconds: integers, so the figures do not depend on the order in which
    the facts came."""

    started: int = 0
    ended: int = 0
    sentiments: int = 0
    sentiment_micros: int = 0
    intents: Mapping[str, int] = field(default_factory=dict)
    handled: int = 0
    handle_ms: int = 0

    def add(self, fact: Fact) -> Stats:
        if fact.kind == STARTED:
            return replace(self, started=self.started + 1)
        if fact.kind == ENDED:
            if fact.handle_ms is None:
                return replace(self, ended=self.ended + 1)
            return replace(
                self,
                ended=self.ended + 1,
                handled=self.handled + 1,
                handle_ms=self.handle_ms + fact.handle_ms,
            )
        if fact.kind == SENTIMENT and fact.score is not None:
            return replace(
                self,
                sentiments=self.sentiments + 1,
                sentiment_micros=self.sentiment_micros + round(fact.score * 1_000_000),
            )
        if fact.kind == INTENT and fact.intent:
            intents = dict(self.intents)
            intents[fact.intent] = intents.get(fact.intent, 0) + 1
            return replace(self, intents=intents)
        return self

    @property
    def empty(self) -> bool:
        return self == Stats()

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "ended": self.ended,
            "sentiments": self.sentiments,
            "sentiment_micros": self.sentiment_micros,
            "intents": dict(self.intents),
            "handled": self.handled,
            "handle_ms": self.handle_ms,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any] | None) -> Stats:
        if not obj:
            return cls()
        return cls(
            started=int(obj.get("started", 0)),
            ended=int(obj.get("ended", 0)),
            sentiments=int(obj.get("sentiments", 0)),
            sentiment_micros=int(obj.get("sentiment_micros", 0)),
            intents={str(k): int(v) for k, v in obj.get("intents", {}).items()},
            handled=int(obj.get("handled", 0)),
            handle_ms=int(obj.get("handle_ms", 0)),
        )

    def published(self) -> dict[str, Any]:
        """The figures as records carry them: counts, sums (to add up several windows or
        queues) and means (None without data); intents most frequent first."""
        return {
            "started": self.started,
            "ended": self.ended,
            "sentiment": {
                "count": self.sentiments,
                "sum": round(self.sentiment_micros / 1_000_000, 6),
                "mean": mean(self.sentiment_micros / 1_000_000, self.sentiments, 4),
            },
            "handle_time_s": {
                "count": self.handled,
                "sum": round(self.handle_ms / 1000, 3),
                "mean": mean(self.handle_ms / 1000, self.handled, 3),
            },
            "intents": dict(sorted(self.intents.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def mean(total: float, count: int, digits: int) -> float | None:
    """``total / count`` rounded to ``digits``; None when ``count`` is 0."""
    return round(total / count, digits) if count else None


@dataclass(frozen=True, slots=True)
class GroupState:
    """Per tenant/queue: calls in progress, and facts applied (``version``: a later record of
    the tenant/queue has a higher one, whichever partition its key is in)."""

    active: int = 0
    version: int = 0

    def apply(self, fact: Fact) -> GroupState:
        return GroupState(active=self.active + fact.active, version=self.version + 1)

    def to_dict(self) -> dict[str, int]:
        return {"active": self.active, "version": self.version}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any] | None) -> GroupState:
        if not obj:
            return cls()
        return cls(active=int(obj.get("active", 0)), version=int(obj.get("version", 0)))


def record_key(group: str, minute_start_ms: int) -> str:
    """``tenant/queue/2025-03-14T09:26:00.000Z``: the key of a minute's record."""
    return f"{group}/{iso_time(minute_start_ms)}"


def record(
    tenant: str,
    queue: str,
    minute_start_ms: int,
    *,
    minute: Stats,
    rolling: Stats,
    group: GroupState,
) -> dict[str, Any]:
    """The record published for one tenant/queue and minute (docs/kafka.md, "Analytics")."""
    end = rolling_end(minute_start_ms)
    return {
        "v": RECORD_VERSION,
        "tenant": tenant,
        "queue": queue,
        "window": {
            "start": iso_time(minute_start_ms),
            "end": iso_time(minute_start_ms + MINUTE_MS),
        },
        "active": group.active,
        **minute.published(),
        "rolling": {
            "window": {"start": iso_time(end - ROLLING_MS), "end": iso_time(end)},
            **rolling.published(),
        },
        "version": group.version,
    }


def encode_record(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------- groups (agent 2)


class Windows(Protocol):
    """Where the groups agent keeps its windows: :class:`MemoryWindows`, or Faust's."""

    def add(self, fact: Fact) -> None:
        """Count ``fact`` in its minute and in each five-minute window holding it."""

    def minute(self, group: str, start_ms: int) -> Stats:
        """The minute's figures (empty if none)."""

    def rolling(self, group: str, end_ms: int) -> Stats:
        """The five minutes' figures up to ``end_ms`` (empty if none)."""


class MemoryWindows:
    """:class:`Windows` in dicts (the tests' model of the tables)."""

    def __init__(self) -> None:
        self.minutes: dict[tuple[str, int], Stats] = {}
        self.rollings: dict[tuple[str, int], Stats] = {}  # by window start

    def add(self, fact: Fact) -> None:
        key = (fact.group, minute_start(fact.time_ms))
        self.minutes[key] = self.minutes.get(key, Stats()).add(fact)
        for start in rolling_starts(fact.time_ms):
            key = (fact.group, start)
            self.rollings[key] = self.rollings.get(key, Stats()).add(fact)

    def minute(self, group: str, start_ms: int) -> Stats:
        return self.minutes.get((group, start_ms), Stats())

    def rolling(self, group: str, end_ms: int) -> Stats:
        return self.rollings.get((group, end_ms - ROLLING_MS), Stats())


class Aggregator:
    """The groups agent's logic: facts in, the records to publish out (key, value).

    ``groups`` maps tenant/queue to :meth:`GroupState.to_dict` (a dict, or the agent's table);
    ``clock`` gives the wall clock in ms: a fact older than ``keep`` by it is dropped (its
    windows may have expired; counted in :attr:`late`), but still counts in ``active``."""

    def __init__(
        self,
        windows: Windows,
        groups: MutableMapping[str, Any],
        *,
        keep: timedelta = KEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.windows = windows
        self.groups = groups
        self._keep_ms = _ms(keep)
        self._clock = clock
        self.late = 0

    def apply(self, fact: Fact) -> list[tuple[str, dict[str, Any]]]:
        group = GroupState.from_dict(self.groups.get(fact.group)).apply(fact)
        self.groups[fact.group] = group.to_dict()
        if fact.time_ms < self._clock() * 1000 - self._keep_ms:
            self.late += 1
            if self.late in (1, 10) or self.late % 1000 == 0:
                log.warning(
                    "analytics: %d facts older than %s dropped (e.g. %s of %s at %s)",
                    self.late,
                    timedelta(milliseconds=self._keep_ms),
                    fact.kind,
                    fact.call_id,
                    iso_time(fact.time_ms),
                )
            return []
        windowed = fact.kind in WINDOWED
        if windowed:
            self.windows.add(fact)
        first = minute_start(fact.time_ms)
        # The fact's minute; and the next four, whose five minutes hold it, if they have
        # figures already (the fact came late): their records are out of date.
        out: list[tuple[str, dict[str, Any]]] = []
        for k in range(ROLLING_MINUTES if windowed else 1):
            start = first + k * MINUTE_MS
            stats = self.windows.minute(fact.group, start)
            if k and stats.empty:
                continue
            rolling = self.windows.rolling(fact.group, rolling_end(start))
            value = record(
                fact.tenant, fact.queue, start, minute=stats, rolling=rolling, group=group
            )
            out.append((record_key(fact.group, start), value))
        return out


# --------------------------------------------------------------------------- reference


def reference(
    events: Iterable[Event],
) -> tuple[dict[str, dict[str, Any]], dict[str, GroupState]]:
    """The latest record of every key, and every tenant/queue's state, that ``events`` give,
    computed here without Kafka: the figures the agents publish from the same events, whatever
    the order in which they interleave calls and topics (the tests compare the two).

    ``events`` in the order each call published them; one partition, no sweep."""
    labeller = Labeller({}, sweep_every=timedelta(days=3650))
    groups: dict[str, Any] = {}
    aggregator = Aggregator(MemoryWindows(), groups, keep=timedelta(days=3650))
    latest: dict[str, dict[str, Any]] = {}
    for event in events:
        for fact in labeller.feed(event, 0):
            latest.update(aggregator.apply(fact))
    return latest, {g: GroupState.from_dict(v) for g, v in groups.items()}


def without_live_fields(value: Mapping[str, Any]) -> dict[str, Any]:
    """A record without ``active`` and ``version``: what depends on the order in which facts
    of different minutes were applied, not on the facts."""
    return {k: v for k, v in value.items() if k not in ("active", "version")}


# --------------------------------------------------------------------------- Faust


class _FaustWindows:
    """:class:`Windows` over the groups agent's windowed tables, inside its stream iteration
    (the current record's timestamp is the fact's event time)."""

    def __init__(self, minutes: WindowWrapperT, rollings: WindowWrapperT) -> None:
        self._minutes = minutes
        self._rollings = rollings

    def add(self, fact: Fact) -> None:
        self._minutes[fact.group].apply(_add, fact)
        self._rollings[fact.group].apply(_add, fact)

    def minute(self, group: str, start_ms: int) -> Stats:
        return _window_value(self._minutes, group, start_ms)

    def rolling(self, group: str, end_ms: int) -> Stats:
        return _window_value(self._rollings, group, end_ms - ROLLING_MS)


def _add(current: Any, fact: Any) -> Any:
    return Stats.from_dict(current).add(fact).to_dict()


def _window_value(wrapper: WindowWrapperT, group: str, start_ms: int) -> Stats:
    """The figures of the window of ``wrapper`` that starts at ``start_ms``."""
    table = wrapper.table
    assert table.window is not None
    window_range = table.window.current(start_ms / 1000)  # Faust's own (start, end) key
    return Stats.from_dict(table.get((group, window_range)))


@dataclass(frozen=True)
class Analytics:
    """What :func:`install` put on the app."""

    topic: TopicT  # {prefix}.analytics: the records
    facts: TopicT  # internal: facts keyed by tenant/queue
    calls: TableT[str, Any]  # call id -> CallState.to_dict()
    groups: TableT[str, Any]  # tenant/queue -> GroupState.to_dict()
    minutes: WindowWrapperT  # tumbling, one minute: tenant/queue -> Stats.to_dict()
    rollings: WindowWrapperT  # hopping, five minutes by one: tenant/queue -> Stats.to_dict()
    calls_agent: AgentT[bytes]
    groups_agent: AgentT[bytes]


def install(
    app: faust.App,
    config: KafkaConfig,
    event_topics: Mapping[str, TopicT],
    *,
    keep: timedelta = KEEP,
    linger: timedelta = LINGER,
    give_up: timedelta = GIVE_UP,
) -> Analytics:
    """Put the analytics agents and tables on ``app`` (:func:`..app.make_app`), reading
    ``event_topics`` (:func:`..app.event_topics`): its ``lifecycle`` and ``insights``.

    Topics, all with ``config.partitions`` partitions (the tables are partitioned like their
    sources): ``{app id}-analytics-facts`` (internal; a fact's record timestamp is its event
    time, by which the windows bucket it) and ``{prefix}.analytics`` (compact,delete), both
    declared by the app; changelogs ``{app id}-analytics-{calls,groups,minute,rolling}-
    changelog``. ``keep``: how old a fact the windows take (by the wall clock); ``linger`` and
    ``give_up``: when the calls table forgets a call (:func:`sweep`)."""
    app_id = app.conf.id
    partitions = config.partitions
    sources = event_topics[topics.LIFECYCLE].derive(
        topics=[
            topics.topic_name(config.topic_prefix, topics.LIFECYCLE),
            topics.topic_name(config.topic_prefix, topics.INSIGHTS),
        ]
    )
    facts_topic = app.topic(
        f"{app_id}-analytics-facts",
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        replicas=config.replication_factor,
        internal=True,
    )
    analytics_topic = app.topic(
        topics.topic_name(config.topic_prefix, topics.ANALYTICS),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        replicas=config.replication_factor,
        internal=True,
        compacting=True,  # a key's latest record is its minute's figures...
        deleting=True,  # ... for the broker's retention
    )
    calls_table = app.Table(
        "analytics-calls", key_type=str, partitions=partitions, help="call id -> CallState"
    )
    groups_table = app.Table(
        "analytics-groups", key_type=str, partitions=partitions, help="tenant/queue -> active"
    )
    expires = keep + EXPIRY_MARGIN
    minutes = (
        app.Table("analytics-minute", default=dict, key_type=str, partitions=partitions)
        .tumbling(MINUTE_MS / 1000, expires=expires)
        .relative_to_stream()
    )
    rollings = (
        app.Table("analytics-rolling", default=dict, key_type=str, partitions=partitions)
        .hopping(ROLLING_MS / 1000, MINUTE_MS / 1000, expires=expires)
        .relative_to_stream()
    )

    async def calls(stream: StreamT[bytes]) -> None:
        labeller = Labeller(calls_table, linger=linger, give_up=give_up)
        event: EventT[bytes]
        async for event in stream.events():
            try:
                if event.value is None:
                    raise EventError("no value")
                call_event = Event.from_json(event.value)
            except EventError as exc:
                log.warning("analytics: skipped a record of %s: %s", event.message.topic, exc)
                continue
            for fact in labeller.feed(call_event, event.message.partition):
                await facts_topic.send(
                    key=fact.group.encode(),
                    value=fact.to_json(),
                    timestamp=fact.time_ms / 1000,  # the windows' time: the event's
                )

    async def groups(stream: StreamT[bytes]) -> None:
        await analytics_topic.maybe_declare()  # before anything is sent to it
        aggregator = Aggregator(_FaustWindows(minutes, rollings), groups_table, keep=keep)
        event: EventT[bytes]
        async for event in stream.events():
            try:
                fact = Fact.from_json(event.value)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("analytics: skipped a fact: %s", exc)
                continue
            for key, value in aggregator.apply(fact):
                await analytics_topic.send(
                    key=key.encode(),
                    value=encode_record(value),
                    headers=[(topics.SCHEMA_VERSION, str(RECORD_VERSION).encode())],
                )

    calls_agent = app.agent(sources, name=f"{app_id}.analytics.calls")(calls)
    groups_agent = app.agent(facts_topic, name=f"{app_id}.analytics.groups")(groups)
    return Analytics(
        topic=analytics_topic,
        facts=facts_topic,
        calls=calls_table,
        groups=groups_table,
        minutes=minutes,
        rollings=rollings,
        calls_agent=calls_agent,
        groups_agent=groups_agent,
    )
