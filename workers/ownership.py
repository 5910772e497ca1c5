"""The worker runtime's decisions, without I/O: which calls to take, where to resume, what to
read next, when a call's input is complete, what another replica took, how far audio may go.

The Redis shell (:mod:`callstream.workers.runtime`) fetches what these functions need, calls
them, and carries out what they decide; everything here is unit-tested without Redis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from callstream.shared.entries import (
    CallEnded,
    CallStarted,
    EntryError,
    InEnd,
    InFrame,
    RawFields,
    decode_call,
    decode_in,
    parse_id,
    previous_id,
)
from callstream.shared.errors import EventError
from callstream.shared.events import CALL_ENDED, Event
from callstream.workers.api import Inputs, Item

START = "0-0"
ALL = "all"  # audio_trim_id: every reader is done with the call's audio
IDLE_END_REASON = "inbound_idle"  # the end of a call whose inbound went quiet (gateway gone)
UNTIL_MISSING_REASON = "done_missing"  # call.ended came, the awaited `*.done` did not

# --------------------------------------------------------------------------- checkpoints

# Fields of the checkpoint hash cs:ckpt:{kind}:{call}.
F_IN = b"entry_id"  # audio: the last processed inbound entry (or earlier: ResumePoint)
F_EVENTS = b"events_id"  # events: the last processed event entry
F_STATE = b"state"  # the handler's per-call state, JSON
F_OWNER = b"owner"
F_HANDBACKS = b"handbacks"  # graceful hand-backs, which are not failed attempts
F_ERROR = b"error"  # the last failure, for the replica that gives the call up
F_DONE = b"done"  # "1": this kind has finished the call (its results are complete)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a kind saved of a call: where to resume, and its handler's state."""

    in_id: str = START
    events_id: str = START
    state: dict[str, Any] = field(default_factory=dict)
    handbacks: int = 0
    error: str | None = None
    done: bool = False
    exists: bool = False  # False: no checkpoint hash (the kind has not served the call)

    @classmethod
    def parse(cls, raw: Mapping[bytes, bytes] | None) -> Checkpoint:
        if not raw:
            return cls()
        state: dict[str, Any] = {}
        if raw.get(F_STATE):
            try:
                loaded = json.loads(raw[F_STATE])
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                state = loaded
        error = raw.get(F_ERROR)
        try:
            handbacks = int(raw.get(F_HANDBACKS) or 0)
        except ValueError:
            handbacks = 0
        return cls(
            in_id=_id_or_start(raw.get(F_IN)),
            events_id=_id_or_start(raw.get(F_EVENTS)),
            state=state,
            handbacks=handbacks,
            error=error.decode(errors="replace") if error else None,
            done=raw.get(F_DONE) == b"1",
            exists=True,
        )

    @property
    def resumed(self) -> bool:
        """A previous owner processed some of the call (or saved state)."""
        return self.in_id != START or self.events_id != START or bool(self.state)


def _id_or_start(raw: bytes | None) -> str:
    if not raw:
        return START
    text = raw.decode(errors="replace")
    try:
        parse_id(text)
    except EntryError:
        return START
    return text


def checkpoint_fields(
    in_id: str, events_id: str, state_json: str, owner: str
) -> dict[bytes, bytes | str]:
    return {F_IN: in_id, F_EVENTS: events_id, F_STATE: state_json, F_OWNER: owner}


# --------------------------------------------------------------------------- taking calls


@dataclass(frozen=True, slots=True)
class Take:
    call: CallStarted
    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledge the entry without serving it (``why`` is for the log)."""

    why: str


@dataclass(frozen=True, slots=True)
class Ignore:
    """Leave the entry as it is (ours already, or we are stopping: it is handed back)."""

    why: str


@dataclass(frozen=True, slots=True)
class Abandon:
    """Give the call up: it failed ``attempts`` times."""

    call: CallStarted
    attempts: int
    error: str


Decision = Take | Ack | Ignore | Abandon


def parse_offer(raw: RawFields | None) -> CallStarted | CallEnded | str:
    """A delivered cs:calls entry, or why it is unusable."""
    if raw is None:
        return "the entry was deleted"
    try:
        return decode_call(raw)
    except EntryError as exc:
        return f"malformed: {exc}"


def needs_stream_check(call: CallStarted, now_ms: int, call_ttl_s: float) -> bool:
    """Whether a call is old enough that its streams may have expired (then look)."""
    return now_ms - call.time_ms > call_ttl_s * 1000


def is_over(last: tuple[bytes, RawFields] | None, now_ms: int, idle_timeout_s: float) -> bool:
    """Whether a call offered to a kind is over already, from its inbound stream's last entry:
    the gateway's end marker, or nothing for ``idle_timeout_s`` (its gateway is gone). Such a
    call is backlog (it began and ended while no replica of the kind served it): it waits
    behind live calls. No entry yet (or no stream any more) says nothing: live."""
    if last is None:
        return False
    entry_id, fields = last
    try:
        entry = decode_in(fields)
    except EntryError:
        return False
    if isinstance(entry, InEnd):
        return True
    return now_ms - parse_id(entry_id.decode())[0] > idle_timeout_s * 1000


def backlog_cost(speed: float, max_calls: int) -> int:
    """The capacity (in real-time calls) one backlog call uses: it is read at ``speed`` times
    real time, so it costs that many live calls' worth, but never more than the replica."""
    return max(1, min(max_calls, math.ceil(speed)))


def decide(
    offer: CallStarted | CallEnded | str,
    *,
    how: str,
    owned: Iterable[str],
    stopping: bool,
    checkpoint: Checkpoint,
    deliveries: int,
    stream_exists: bool,
    max_attempts: int,
) -> Decision:
    """What to do with a `started` entry the group delivered (``how``: ``new`` from
    XREADGROUP, ``failover`` from XAUTOCLAIM: its previous owner died or handed it back).

    ``deliveries`` is the entry's delivery count in the group (failover only), ``stream_exists``
    whether the call's inbound stream exists (only looked up when :func:`needs_stream_check`).
    """
    if isinstance(offer, str):
        return Ack(offer)
    if isinstance(offer, CallEnded):
        return Ack("an ended entry")
    if stopping:
        return Ignore("stopping")
    if offer.call_id in owned:
        return Ignore("already ours")
    if checkpoint.done:
        return Ack("already finished by this kind")
    if not stream_exists:
        # An old call whose streams expired (a new kind's group starts at the head of
        # cs:calls): nothing to serve. A long call still running has its stream.
        return Ack("its streams have expired")
    if how == "failover":
        attempt = deliveries - checkpoint.handbacks  # hand-backs are not failures
        if attempt > max_attempts:
            return Abandon(offer, attempt - 1, checkpoint.error or "its owner stopped answering")
    return Take(offer, checkpoint)


def missing_entries(owned: Mapping[str, str], mine: set[str], settled: set[str]) -> list[str]:
    """At a heartbeat: the owned calls (call id → `started` entry id) whose entry is no longer
    in this consumer's pending list, except ``settled`` ones (finishing, or known trimmed).
    The shell looks each one up in cs:calls and hands the answers to :func:`classify_missing`.
    """
    return [call for call, entry in owned.items() if entry not in mine and call not in settled]


def classify_missing(
    missing: Sequence[str], present: Sequence[bool]
) -> tuple[list[str], list[str]]:
    """(taken over, trimmed): an entry still in cs:calls was claimed by another replica (stop
    serving the call, it resumes from our checkpoint); one gone from cs:calls was trimmed (a
    call older than CS_CALLS_RETENTION_S) or lost with Redis's data: serve the call to its end,
    as nobody else can take it now."""
    lost = [call for call, there in zip(missing, present, strict=True) if there]
    trimmed = [call for call, there in zip(missing, present, strict=True) if not there]
    return lost, trimmed


# --------------------------------------------------------------------------- reading a call


@dataclass(slots=True)
class Batch:
    """What one read of a call gives its handler, and where reading goes on."""

    items: list[Item]
    last_in: str | None  # the last inbound entry consumed (delivered or skipped)
    last_event: str | None
    skipped: list[str]  # why entries were skipped (malformed), for the log


class CallInput:
    """One call's input for one kind: what to read next, and what a read delivers.

    Pure: the shell reads the streams this names (:meth:`streams`) with one shared XREAD and
    hands the replies to :meth:`receive`, which merges audio and events in publication order,
    keeps the events the kind asked for, and notices the ends of the inputs.
    """

    def __init__(
        self, inputs: Inputs, in_key: str, events_key: str, in_id: str, events_id: str
    ) -> None:
        self.inputs = inputs
        self.in_key = in_key
        self.events_key = events_key
        self.in_id = in_id  # read position: the last inbound entry read
        self.events_id = events_id
        self.audio_open = inputs.audio
        self.events_open = inputs.reads_events
        self.end_reason: str | None = None  # from the audio end, or the `until` event
        self.call_ended = False  # call.ended seen (events input)
        self.participants: dict[int, str] = {}

    @property
    def complete(self) -> bool:
        """Every input has ended: the handler gets InEnd and the call is done."""
        return not self.audio_open and not self.events_open

    def streams(self) -> dict[str, str]:
        """Stream key → id to read after, for the inputs still open."""
        streams: dict[str, str] = {}
        if self.audio_open:
            streams[self.in_key] = self.in_id
        if self.events_open:
            streams[self.events_key] = self.events_id
        return streams

    def receive(
        self,
        audio: Sequence[tuple[bytes, RawFields]],
        events: Sequence[tuple[bytes, RawFields]],
        count: int,
    ) -> Batch:
        """The entries one XREAD returned for this call (``count`` per stream at most)."""
        skipped: list[str] = []
        if not events:  # the common case: audio only
            items, end_id = self._audio(audio, skipped)
            last_in = end_id or (audio[-1][0].decode() if audio else None)
            if last_in is not None:
                self.in_id = last_in
            if self.complete:
                items.append((self.in_id, InEnd(self.end_reason or "normal")))
            return Batch(items, last_in, None, skipped)
        if audio and events and (len(audio) >= count or len(events) >= count):
            # A stream cut at ``count`` may have more before the other's last entry: deliver
            # only up to the earlier of the cut streams' last ids, the rest is read again.
            cut = min(
                parse_id(entries[-1][0].decode())
                for entries in (audio, events)
                if len(entries) >= count
            )
            audio = [e for e in audio if parse_id(e[0].decode()) <= cut]
            events = [e for e in events if parse_id(e[0].decode()) <= cut]
        audio_items = self._audio(audio, skipped)
        event_items = self._events(events, skipped)
        last_in = audio[-1][0].decode() if audio else None
        last_event = event_items[1]
        items = audio_items[0]
        if event_items[0]:
            items = (
                sorted([*items, *event_items[0]], key=lambda item: parse_id(item[0]))
                if items
                else event_items[0]
            )
        if audio_items[1] is not None:
            last_in = audio_items[1]
        if last_in is not None:
            self.in_id = last_in
        if last_event is not None:
            self.events_id = last_event
        if self.complete:
            items.append((self.in_id, InEnd(self.end_reason or "normal")))
        return Batch(items, last_in, last_event, skipped)

    def _audio(
        self, entries: Sequence[tuple[bytes, RawFields]], skipped: list[str]
    ) -> tuple[list[Item], str | None]:
        """Decoded audio items; and the id of the end marker, when it came (reading stops)."""
        items: list[Item] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            try:
                entry = decode_in(fields)
            except EntryError as exc:
                skipped.append(f"inbound entry {entry_id}: {exc}")
                continue
            if isinstance(entry, InEnd):
                self.audio_open = False
                self.end_reason = entry.reason
                return items, entry_id
            if (
                isinstance(entry, InFrame)
                and entry.participant
                and self.participants.get(entry.channel) != entry.participant
            ):
                self.participants[entry.channel] = entry.participant
            items.append((entry_id, entry))
        return items, None

    def _events(
        self, entries: Sequence[tuple[bytes, RawFields]], skipped: list[str]
    ) -> tuple[list[Item], str | None]:
        if not entries:
            return [], None
        wanted = self.inputs.events
        until = self.inputs.until
        items: list[Item] = []
        last: str | None = None
        for raw_id, fields in entries:
            last = raw_id.decode()
            event_type = fields.get(b"type", b"").decode(errors="replace")
            if event_type not in wanted and event_type not in until and event_type != CALL_ENDED:
                continue  # not decoded: most of a call's events are of no interest here
            try:
                event = Event.from_fields(fields)
            except EventError as exc:
                skipped.append(f"event entry {last}: {exc}")
                continue
            if event_type in wanted:
                items.append((last, event))
            if event_type == CALL_ENDED:
                self.call_ended = True
            if event_type in until:
                self.events_open = False
                if self.end_reason is None or not self.inputs.audio:
                    reason = event.data.get("reason")
                    self.end_reason = reason if isinstance(reason, str) else event_type
                break
        return items, last

    def end_input(self, reason: str) -> list[Item]:
        """End every input now (the call went quiet, or the awaited event never came)."""
        self.audio_open = False
        self.events_open = False
        if self.end_reason is None:
            self.end_reason = reason
        return [(self.in_id, InEnd(self.end_reason))]


# --------------------------------------------------------------------------- resume and trim


def resume_point(processed_in: str, needed: str | None) -> str:
    """Where the next owner reads audio after: the last processed entry, or just before the
    earliest one the handler still needs (:class:`~callstream.workers.api.ResumePoint`)."""
    if needed is not None and parse_id(needed) <= parse_id(processed_in):
        return previous_id(needed)
    return processed_in


def audio_trim_id(positions: Iterable[Checkpoint | None], margin_ms: int) -> str | None:
    """The MINID the call's inbound stream may be trimmed to, or None (not yet).

    ``positions`` holds the checkpoint of every kind that reads audio (None or a missing one:
    that kind has not taken the call yet, and will read it from the start). Audio stays until
    every one of them has checkpointed past it, plus ``margin_ms`` of replay margin; when every
    one has finished the call, :data:`ALL`: the stream can go.
    """
    earliest: tuple[int, int] | None = None
    for checkpoint in positions:
        if checkpoint is None or not checkpoint.exists:
            return None
        if checkpoint.done:
            continue
        position = parse_id(checkpoint.in_id)
        if earliest is None or position < earliest:
            earliest = position
    if earliest is None:
        return ALL  # every reader is done: nothing is needed any more
    if margin_ms <= 0:
        return None if earliest == (0, 0) else f"{earliest[0]}-{earliest[1]}"
    trim_ms = earliest[0] - margin_ms
    if trim_ms <= 0:
        return None
    return f"{trim_ms}-0"
