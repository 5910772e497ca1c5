"""``callstream tail``: follow ``cs:insights`` in a terminal, or as JSON lines for scripts.

Two layers, as elsewhere in callstream:

- a pure core, unit-tested without Redis or a terminal: :class:`EventFilter` (``--call``,
  ``--type``), :class:`RecentIds` (drops an event whose id was already shown),
  :class:`HumanView` (events in, terminal operations out: a permanent :class:`Line`, or the
  :class:`Status` line that shows partial transcripts and is rewritten in place),
  :class:`Screen` (operations to the text written to the terminal), :func:`json_line` and
  :func:`resume_position` (where to go on reading after Redis came back);
- :func:`follow`, a thin asyncio loop: ``XREAD BLOCK`` on ``cs:insights`` from the last entry
  id read, through Redis outages (one line on stderr, retries with a backoff of up to 2 s),
  until SIGINT or SIGTERM (exit 0) or a closed stdout (exit 0, quietly);
- ``--kafka``: :func:`follow_kafka` reads the Kafka topics of ``callstream worker kafka``
  instead — the analytics records (``{prefix}.analytics``: :func:`analytics_text` for people,
  the record's JSON with ``--json``) and, with ``--kafka-topics``, event families, shown as
  events from Redis are.

docs/tail.md describes the command for its users.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import logging
import math
import os
import shutil
import signal
import ssl
import stat
import sys
import zlib
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Protocol, TextIO, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callstream.shared.catalogue import AGENT_TURN, done_kind
from callstream.shared.entries import XReadReply
from callstream.shared.errors import BusError, ConfigError, EventError
from callstream.shared.events import Event, parse_iso_ms
from callstream.shared.keys import INCARNATION_SEPARATOR, validate_call_id
from callstream.shared.settings import Settings
from callstream.workers.kafka import topics as kafka_topics
from callstream.workers.kafka.config import KafkaConfig

BLOCK_MS = 1000  # one XREAD waits at most this long for new entries
READ_COUNT = 500  # entries per XREAD
SOCKET_TIMEOUT_S = BLOCK_MS / 1000 + 4.0  # a reply later than this: Redis is unreachable
CONNECT_TIMEOUT_S = 2.0
FIRST_BACKOFF_S = 0.1  # after a failed read, doubled up to MAX_BACKOFF_S
MAX_BACKOFF_S = 2.0
RECENT_IDS = 20_000  # event ids remembered to drop duplicates (they come within seconds)
REMEMBERED_UTTERANCES = 4096  # finals whose speaker, and whose late partials, are remembered
MAX_PENDING_PARTIALS = 16  # utterances whose partial may still be on the status line
SUMMARY_VALUE_CHARS = 300  # a longer value of nlp.summary is cut
OTHER_DATA_CHARS = 160  # the data of an event type tail does not know, on its line
TOPIC_CHECK_S = 2.0  # --kafka: how often a topic that does not exist yet is looked for
TOP_INTENTS = 3  # intents on an analytics line

TRANSCRIPT = "transcript"
PARTIAL_MARK = ":partial:"
SPEECH_TYPES = ("speech.started", "speech.stopped")
NLP_PREFIX = "nlp."
SUMMARY = "nlp.summary"


# --------------------------------------------------------------------------- selection


def parse_types(values: Iterable[str]) -> tuple[str, ...]:
    """``--type`` values (repeatable, each comma-separated) as a tuple of patterns."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def check_call_id(call_id: str) -> str:
    """``--call``: a call id, or ``id~n`` for the n-th call that reused it; ConfigError if not."""
    base, sep, incarnation = call_id.partition(INCARNATION_SEPARATOR)
    try:
        validate_call_id(base)
    except ValueError as exc:
        raise ConfigError(f"--call: {exc}") from None
    if sep and not (incarnation.isdigit() and incarnation.isascii()):
        raise ConfigError(f"--call: after '~' comes the call's incarnation number, got {call_id!r}")
    return call_id


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to show: of one call (exact id, so ``abc`` is not ``abc~2``), and of the
    types matching any of ``types`` (shell-style patterns: ``transcript``, ``nlp.*``,
    ``*.done``). Empty: everything."""

    call_id: str | None = None
    types: tuple[str, ...] = ()

    def matches_type(self, event_type: str) -> bool:
        return not self.types or any(fnmatch.fnmatchcase(event_type, p) for p in self.types)

    def matches(self, call_id: str, event_type: str) -> bool:
        return (self.call_id is None or call_id == self.call_id) and self.matches_type(event_type)

    def names(self, event_type: str) -> bool:
        """Whether ``--type`` asks for this type (not merely lets everything through)."""
        return bool(self.types) and self.matches_type(event_type)


class RecentIds:
    """The ids of the last ``size`` events shown: :meth:`add` is False for a duplicate."""

    def __init__(self, size: int = RECENT_IDS) -> None:
        self._size = size
        self._ids: dict[str, None] = {}

    def add(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._size:
            del self._ids[next(iter(self._ids))]
        return True


class LatestValues:
    """The last record shown of each of the last ``size`` keys: :meth:`changed` is False for
    a record equal to the one shown last for its key (a record sent again)."""

    def __init__(self, size: int = RECENT_IDS) -> None:
        self._size = size
        self._values: dict[bytes, bytes] = {}

    def changed(self, key: bytes | None, value: bytes) -> bool:
        if key is None:
            return True
        if self._values.get(key) == value:
            return False
        self._values.pop(key, None)
        self._values[key] = value
        if len(self._values) > self._size:
            del self._values[next(iter(self._values))]
        return True


def parse_kafka_topics(values: Iterable[str]) -> tuple[str, ...]:
    """``--kafka-topics`` values (repeatable, comma-separated): families of events, or
    ``analytics``; ConfigError for another name. None given: ``analytics``."""
    known = (*kafka_topics.FAMILIES, kafka_topics.ANALYTICS)
    names = tuple(dict.fromkeys(parse_types(values)))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            f"--kafka-topics: no topic {', '.join(map(repr, unknown))}; they are {', '.join(known)}"
        )
    return names or (kafka_topics.ANALYTICS,)


def use_color(*, isatty: bool, env: Mapping[str, str], no_color: bool) -> bool:
    """Colour only on a terminal, without ``NO_COLOR`` (https://no-color.org: set and not
    empty), ``TERM=dumb`` or ``--no-color``."""
    return isatty and not no_color and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


# --------------------------------------------------------------------------- stream position


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def resume_position(last_id: str, last_generated_id: str | None) -> str:
    """Where to read on from after an outage, having read up to ``last_id``.

    ``last_generated_id`` is the stream's (``XINFO STREAM``), None when the key is gone. A
    stream that still knows ids up to ``last_id`` (Redis kept it, or it was a network outage)
    is read on from ``last_id``. One that is gone or now ends before ``last_id`` was lost with
    its Redis and begun again: all it holds was added since, with ids that may be lower than
    ``last_id`` (another server's clock), so it is read from its start, ``0-0``. (A Redis that
    came back from an older snapshot holds, besides, events already shown: they are dropped by
    their ids.)
    """
    if last_generated_id is None or _stream_id(last_generated_id) < _stream_id(last_id):
        return "0-0"
    return last_id


# --------------------------------------------------------------------------- JSON output


def json_line(raw: bytes | str) -> str:
    """An entry's ``event`` field — the envelope's JSON as its publisher wrote it — on one line
    (re-encoded compactly only in the unlikely case that it spans several)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if "\n" in text or "\r" in text:
        text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    return text


# --------------------------------------------------------------------------- terminal ops


@dataclass(frozen=True, slots=True)
class Line:
    """A permanent line (plain text or with ANSI styles; no newline)."""

    text: str


@dataclass(frozen=True, slots=True)
class Status:
    """The one transient line at the bottom, rewritten in place; ``""`` removes it."""

    text: str


Op = Line | Status

CLEAR_LINE = "\r\x1b[2K"  # to the line's start, and erase it


class Screen:
    """Terminal operations to the text that performs them (pure: it only remembers whether
    a status line is showing)."""

    def __init__(self) -> None:
        self._status = ""  # on screen now
        self._hidden = ""  # taken off by suspend(), put back by resume()

    def render(self, ops: Iterable[Op]) -> str:
        parts: list[str] = []
        for op in ops:
            if isinstance(op, Line):
                parts.append(f"{CLEAR_LINE if self._status else ''}{op.text}\n")
                self._status = ""
            else:
                if op.text or self._status:
                    parts.append(CLEAR_LINE + op.text)
                self._status = op.text
        self._hidden = ""
        return "".join(parts)

    def suspend(self) -> str:
        """Take the status line off (before something else writes to the terminal)."""
        if not self._status:
            return ""
        self._hidden, self._status = self._status, ""
        return CLEAR_LINE

    def resume(self) -> str:
        """Put back what :meth:`suspend` took off."""
        text, self._hidden = self._hidden, ""
        return self.render([Status(text)]) if text else ""


# --------------------------------------------------------------------------- styles

_RESET = "\x1b[0m"
_DIM = "2"
_BOLD = "1"
_ITALIC = "3"
_RED = "31"
# Participants' colours: green, yellow, blue, magenta, cyan, then the bright ones (red is for
# failures). A participant keeps its colour across runs and calls: picked by a hash of its id.
PALETTE = ("32", "33", "34", "35", "36", "92", "93", "94", "95", "96")


def participant_color(participant: str) -> str | None:
    """The SGR colour code of a participant; None for ``""`` (a mixed call's one stream)."""
    if not participant:
        return None
    return PALETTE[zlib.crc32(participant.encode("utf-8", "replace")) % len(PALETTE)]


class _Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *codes: str | None) -> str:
        sgr = ";".join(code for code in codes if code)
        if not self.enabled or not sgr or not text:
            return text
        return f"\x1b[{sgr}m{text}{_RESET}"


# --------------------------------------------------------------------------- value formatting


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def compact(value: object, limit: int = SUMMARY_VALUE_CHARS) -> str:
    """Any JSON value on one short line."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return _cut(_one_line(text), limit)


def _scalar(value: object) -> str:
    number = _num(value)
    if number is not None:
        return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:.2f}"
    if isinstance(value, str):
        return _one_line(value)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return compact(value)


def summary_value(value: object) -> str:
    """A value of ``nlp.summary``: scalars as they are, a list of scalars comma-separated, an
    object of scalars as ``k=v``; anything else compact JSON."""
    if isinstance(value, list) and all(not isinstance(v, list | dict) for v in value):
        text = ", ".join(_scalar(v) for v in value)
    elif isinstance(value, dict) and all(not isinstance(v, list | dict) for v in value.values()):
        text = ", ".join(f"{_one_line(str(k))}={_scalar(v)}" for k, v in value.items())
    else:
        text = _scalar(value)
    return _cut(text, SUMMARY_VALUE_CHARS)


def summary_field(key: str, value: object) -> str:
    """A call-level value of ``nlp.summary``: the fields the nlp worker publishes today in
    words (``sentiment_trend``, ``intents``, ...), anything else by :func:`summary_value`."""
    number = _num(value)
    if key == "duration_s" and number is not None and number >= 0:
        return format_offset(round(number * 1000))
    if key == "silence_ratio" and number is not None:
        return f"{number:.0%}"
    if key == "sentiment_trend" and isinstance(value, dict) and set(value) <= _TREND_KEYS:
        direction = _str(value.get("direction")) or "-"
        halves = [_num(value.get("first_half")), _num(value.get("second_half"))]
        if all(half is not None for half in halves):
            return f"{direction} ({halves[0]:+.2f} → {halves[1]:+.2f})"
        return direction
    if key == "intents" and isinstance(value, list) and all(_is_intent(v) for v in value):
        return ", ".join(_intent_summary(v) for v in value) or "-"
    if value is None:
        return "-"
    return summary_value(value)


_TREND_KEYS = frozenset({"direction", "first_half", "second_half"})


def _is_intent(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("name"), str)


def _intent_summary(intent: Mapping[str, Any]) -> str:
    count, score = _num(intent.get("count")), _num(intent.get("score"))
    text = str(intent["name"]) + (f" ×{int(count)}" if count is not None and count != 1 else "")
    return text + (f" ({score:.2f})" if score is not None else "")


def format_offset(ms: int) -> str:
    """Milliseconds from the call's start as ``m:ss.s`` (``h:mm:ss`` past an hour), cut (not
    rounded) to the tenth."""
    tenths = max(ms, 0) // 100
    minutes, tenths = divmod(tenths, 600)
    if minutes >= 60:
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02d}:{tenths // 10:02d}"
    return f"{minutes}:{tenths // 10:02d}.{tenths % 10}"


def utterance_of(transcript_id: str) -> str:
    """The utterance a transcript event is about: its final's id (a partial's, cut)."""
    return transcript_id.split(PARTIAL_MARK, 1)[0]


def onset_ms(event_id: str) -> int | None:
    """``{onset_ms}`` of a ``…:{channel}:{onset_ms}`` id (transcript, speech.*)."""
    tail = utterance_of(event_id).rsplit(":", 2)
    if len(tail) == 3 and tail[1].isdigit() and tail[2].isdigit():
        return int(tail[2])
    return None


def short_call(call_id: str) -> str:
    """A call id short enough for every line: a long one is cut in its middle."""
    base, sep, incarnation = call_id.partition(INCARNATION_SEPARATOR)
    if len(base) > 14:
        base = f"{base[:8]}…{base[-4:]}"
    return base + sep + incarnation


def participant_label(participant: str) -> str:
    """A participant's raw id, cut in its middle when long; ``mixed`` for ``""``."""
    if not participant:
        return "mixed"
    return participant if len(participant) <= 18 else f"{participant[:10]}…{participant[-6:]}"


# --------------------------------------------------------------------------- the view


class HumanView:
    """Events to terminal operations, for people (pure).

    ``tty``: partial transcripts go to the :class:`Status` line (off a terminal they are not
    shown: only finals); ``color``: ANSI styles; ``show_call``: every line names its call
    (off when following one call); ``show_speech``: ``speech.*`` lines; ``width``: the
    terminal's, to which the status line is cut so that it can be rewritten; ``tz``: the zone
    of the times shown (default local).
    """

    def __init__(
        self,
        *,
        tty: bool,
        color: bool,
        show_call: bool = True,
        show_speech: bool = False,
        width: int = 80,
        tz: tzinfo | None = None,
    ) -> None:
        self.tty = tty
        self.width = width
        self.show_call = show_call
        self.show_speech = show_speech
        self._tz = tz
        self._style = _Style(color)
        self._pending: dict[str, str] = {}  # utterance -> its latest partial's status text
        self._speakers: dict[str, str] = {}  # utterance (final seen) -> participant
        self._last: str | None = None  # the utterance of the last line: its final or insight

    # ---- entry points

    def event(self, event: Event) -> list[Op]:
        """What to show for one event (nothing for a partial off a terminal, say)."""
        try:
            return self._event(event)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError):
            # A shape none of the renderers below expected: say what came, as it came.
            return self._lines([self._dim_line(event, f"{event.type} {compact(event.data)}")])

    def skipped(self, entry_id: str, problem: str) -> list[Op]:
        """A stream entry that is not an event."""
        text = f"skipped entry {entry_id}: {_cut(_one_line(problem), OTHER_DATA_CHARS)}"
        return self._lines([self._style(text, _DIM)])

    def analytics(self, record: Mapping[str, Any]) -> list[Op]:
        """An analytics record (``--kafka``)."""
        text = analytics_text(record)
        group, _, rest = text.partition("  ")
        when = self._style(analytics_time(record, self._tz) + "  ", _DIM)
        return self._lines([when + self._style(group, _BOLD) + ("  " + rest if rest else "")])

    def close(self) -> list[Op]:
        """Before exiting: take the status line off."""
        self._pending.clear()
        return [Status("")] if self.tty else []

    # ---- dispatch

    def _event(self, event: Event) -> list[Op]:
        kind = event.type
        if kind == TRANSCRIPT:
            return self._transcript(event)
        if kind == SUMMARY:
            return self._lines(self._summary(event))
        if kind.startswith(NLP_PREFIX) and done_kind(kind) is None:  # nlp.done is lifecycle
            return self._insight(event)
        if kind in SPEECH_TYPES and not self.show_speech:
            return []
        if kind == AGENT_TURN:
            return self._lines([self._agent_turn(event)])
        if kind.endswith(".done") or kind == "worker.failed":
            self._forget_partials(event)
        return self._lines([self._lifecycle(event)])

    def _lines(self, lines: Sequence[str], anchor: str | None = None) -> list[Op]:
        """Permanent lines; then the status line again if a partial is still pending."""
        self._last = anchor
        ops: list[Op] = [Line(line) for line in lines]
        if ops and self._pending:
            ops.append(Status(next(reversed(self._pending.values()))))
        return ops

    def _prefix(self, event: Event) -> str:
        moment = datetime.fromtimestamp(event.time_ms / 1000, self._tz)
        text = moment.strftime("%H:%M:%S")
        if self.show_call:
            text += f" {short_call(event.call_id):<14}"
        return text + "  "

    def _dim_line(self, event: Event, text: str) -> str:
        return self._style(self._prefix(event), _DIM) + self._style(_one_line(text), _DIM)

    # ---- transcripts

    def _transcript(self, event: Event) -> list[Op]:
        data = event.data
        utterance = utterance_of(event.id)
        participant = _str(data.get("participantRawID"))
        text = _one_line(_str(data.get("text")))
        partial = data.get("resultStatus") == "Intermediate" or PARTIAL_MARK in event.id
        if partial:
            if not self.tty or utterance in self._speakers:  # off a terminal, or late
                return []
            status = self._status_text(event, participant, text)
            self._pending.pop(utterance, None)
            self._pending[utterance] = status
            while len(self._pending) > MAX_PENDING_PARTIALS:
                del self._pending[next(iter(self._pending))]
            return [Status(status)]
        self._pending.pop(utterance, None)
        self._speakers[utterance] = participant
        while len(self._speakers) > REMEMBERED_UTTERANCES:
            del self._speakers[next(iter(self._speakers))]
        color = participant_color(participant)
        label = self._style(participant_label(participant) + ":", _BOLD, color)
        words = self._style(text, color) if text else self._style("(no words)", _DIM, _ITALIC)
        line = self._style(self._prefix(event), _DIM) + f"{label} {words}"
        return self._lines([line], anchor=utterance)  # a Line takes the status line's place

    def _status_text(self, event: Event, participant: str, text: str) -> str:
        plain = f"{self._prefix(event)}{participant_label(participant)}: {text} …"
        if len(plain) >= self.width:  # a wrapped status line cannot be rewritten in place
            plain = "…" + plain[len(plain) - max(self.width - 2, 1) :]
        return self._style(plain, _DIM, participant_color(participant))

    def _forget_partials(self, event: Event) -> None:
        """The call's transcription is over: partials still pending will get no final."""
        kind = done_kind(event.type) or _str(event.data.get("kind"))
        if kind == "transcribe":
            prefix = f"{event.call_id}:"
            for utterance in [u for u in self._pending if u.startswith(prefix)]:
                del self._pending[utterance]

    # ---- insights

    def _insight(self, event: Event) -> list[Op]:
        data = event.data
        utterance = _str(data.get("utterance")) or None
        participant = self._speakers.get(utterance or "", _str(data.get("participant")))
        body = _insight_text(event.type, data)
        ref = ""
        if utterance is None or utterance != self._last:
            ref = self._ref(utterance) + " "
        color = participant_color(participant)
        line = (
            self._style(self._prefix(event), _DIM)
            + self._style("    ↳ ", color)
            + self._style(ref, _DIM)
            + self._style(body, color)
        )
        return self._lines([line], anchor=utterance)

    def _ref(self, utterance: str | None) -> str:
        """Which utterance an insight is about, when it is not right above: its onset."""
        if utterance is None:
            return "(call)"
        onset = onset_ms(utterance)
        return f"@{format_offset(onset)}" if onset is not None else f"@{_cut(utterance, 24)}"

    # ---- summary

    def _summary(self, event: Event) -> list[str]:
        data = event.data
        prefix = self._style(self._prefix(event), _DIM)
        lines = [prefix + self._style("call summary", _BOLD)]
        participants = data.get("participants")
        rows: list[tuple[str, dict[str, Any]]] = []
        if isinstance(participants, dict) and all(
            isinstance(v, dict) for v in participants.values()
        ):
            rows = [(str(k), v) for k, v in participants.items()]
        for row in self._participants_table(rows):
            lines.append(prefix + "  " + row)
        for key, value in data.items():
            if key == "participants" and rows:
                continue
            if key == "participants" and isinstance(participants, dict) and not participants:
                continue
            lines.append(prefix + f"  {_one_line(str(key))}: {summary_field(str(key), value)}")
        return lines

    def _participants_table(self, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
        if not rows:
            return []
        columns = [c for c in SUMMARY_COLUMNS if any(c in stats for _, stats in rows)]
        for _, stats in rows:
            columns += [str(k) for k in stats if str(k) not in columns]
        header = ["participant", *(SUMMARY_COLUMNS.get(c) or _one_line(c) for c in columns)]
        cells = [
            [participant_label(pid), *(_summary_cell(c, stats.get(c)) for c in columns)]
            for pid, stats in rows
        ]
        widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]

        def fmt(row: Sequence[str]) -> str:
            first = row[0].ljust(widths[0])
            rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            return "  ".join([first, *rest]).rstrip()

        table = [self._style(fmt(header), _DIM)]
        for (pid, _), row in zip(rows, cells, strict=True):
            text = fmt(row)
            name = row[0].ljust(widths[0])
            table.append(self._style(name, participant_color(pid)) + text[len(name) :])
        return table

    # ---- the voice agent

    def _agent_turn(self, event: Event) -> str:
        """``agent: <what it said>  [intent, action, barged in, held 2×]``."""
        data = event.data
        notes = [_str(data.get(k)) for k in ("intent", "action") if _str(data.get(k))]
        if data.get("ended") == "barged_in":
            notes.append("barged in")
        elif data.get("ended") == "hung_up":
            notes.append("cut off")
        holds = _num(data.get("holds"))
        if holds:
            notes.append(f"held {int(holds)}×")
        text = self._style("agent: ", _BOLD) + _one_line(_str(data.get("text")))
        if notes:
            text += self._style(f"  [{', '.join(notes)}]", _DIM)
        return self._style(self._prefix(event), _DIM) + text

    # ---- lifecycle and others

    def _lifecycle(self, event: Event) -> str:
        data, kind = event.data, event.type
        if kind == "call.started":
            rate = _num(data.get("rate_hz"))
            khz = f"{rate / 1000:g} kHz " if rate is not None else ""
            text = f"call started  {khz}{_str(data.get('mode'))}  ({event.call_id})"
        elif kind == "call.ended":
            frames = _num(data.get("frames"))
            count = f", {int(frames)} frames" if frames is not None else ""
            text = f"call ended  {_str(data.get('reason')) or '?'}{count}"
        elif kind == "dtmf":
            who = _str(data.get("participant"))
            text = f"dtmf {_str(data.get('tone')) or '?'}" + (
                f"  ({participant_label(who)})" if who else ""
            )
        elif kind in SPEECH_TYPES:
            who = participant_label(_str(data.get("participantRawID")))
            offset = _num(data.get("offset"))
            at = f" @{format_offset(int(offset // 10_000))}" if offset is not None else ""
            text = f"{kind.replace('.', ' ')}  {who}{at}"
        elif kind == "playback.mark":
            text = f"mark {_str(data.get('name'))}"
        elif kind == "worker.failed":
            attempts = _num(data.get("attempts"))
            after = f" after {int(attempts)} attempts" if attempts is not None else ""
            error = _cut(_one_line(_str(data.get("error"))), OTHER_DATA_CHARS)
            line = f"{_str(data.get('kind')) or '?'} failed{after}: {error}"
            return self._style(self._prefix(event), _DIM) + self._style(line, _RED)
        elif done_kind(kind) is not None:
            reason = _str(data.get("reason"))
            text = f"{done_kind(kind)} done" + (f" ({reason})" if reason else "")
        else:  # a worker kind's own type
            text = f"{kind}  {compact(dict(data), OTHER_DATA_CHARS)}"
        return self._dim_line(event, text)


SUMMARY_COLUMNS = {
    "talk_time_s": "talk time",
    "turns": "turns",
    "interruptions": "interruptions",
    "mean_sentiment": "sentiment",
}


def _summary_cell(column: str, value: object) -> str:
    number = _num(value)
    if value is None:
        return "-"
    if number is None:
        return _cut(summary_value(value), 40)
    if column == "talk_time_s":
        return format_offset(round(number * 1000)) if number >= 60 else f"{number:.1f} s"
    if column == "mean_sentiment":
        return f"{number:+.2f}"
    return _scalar(number)


def _insight_text(event_type: str, data: Mapping[str, Any]) -> str:
    """One insight (``nlp.*`` but the summary) in a few words."""
    name = event_type[len(NLP_PREFIX) :]
    if event_type == "nlp.sentiment":
        label = _str(data.get("label")) or "?"
        numbers = []
        score, rolling = _num(data.get("score")), _num(data.get("rolling"))
        if score is not None:
            numbers.append(f"{score:+.2f}")
        if rolling is not None:
            numbers.append(f"rolling {rolling:+.2f}")
        return f"sentiment {label}" + (f" ({', '.join(numbers)})" if numbers else "")
    if event_type == "nlp.key_phrases":
        phrases = data.get("phrases")
        if isinstance(phrases, list):
            return "key phrases: " + (", ".join(_phrase(p) for p in phrases) or "-")
    elif event_type == "nlp.intent":
        score = _num(data.get("score"))
        return f"intent {_str(data.get('name')) or '?'}" + (
            f" ({score:.2f})" if score is not None else ""
        )
    elif event_type == "nlp.pii":
        entities = data.get("entities")
        kinds: list[str] = []
        if isinstance(entities, list):
            for entity in entities:
                kind = _str(entity.get("type")) if isinstance(entity, dict) else ""
                if kind and kind not in kinds:
                    kinds.append(kind)
        text = _one_line(_str(data.get("redacted_text")))
        return f"pii: {json.dumps(text, ensure_ascii=False)}" + (
            f" ({', '.join(kinds)})" if kinds else ""
        )
    rest = {k: v for k, v in data.items() if k != "utterance"}
    return f"{name} {compact(rest, OTHER_DATA_CHARS)}"


def _phrase(value: object) -> str:
    if isinstance(value, str):
        return _one_line(value)
    if isinstance(value, list) and value and isinstance(value[0], str):
        return _one_line(value[0])
    if isinstance(value, dict):
        for key in ("text", "phrase"):
            if isinstance(value.get(key), str):
                return _one_line(value[key])
    return compact(value, 40)


# --------------------------------------------------------------------------- analytics


def format_duration_s(seconds: float) -> str:
    """Seconds as ``m:ss`` (``h:mm:ss`` past an hour), rounded to the second."""
    minutes, secs = divmod(max(round(seconds), 0), 60)
    if minutes >= 60:
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def _mean_figure(label: str, figure: object, fmt: Callable[[float], str]) -> str:
    """``sentiment -0.12 (7)``: a ``{"count", "mean"}`` figure; ``sentiment -`` without one."""
    if isinstance(figure, dict):
        mean, count = _num(figure.get("mean")), _num(figure.get("count"))
        if mean is not None:
            return f"{label} {fmt(mean)}" + (f" ({int(count)})" if count is not None else "")
    return f"{label} -"


def _intents_figure(intents: object) -> str:
    if not isinstance(intents, dict):
        return ""
    counts = [(str(k), n) for k, v in intents.items() if (n := _num(v)) is not None]
    counts.sort(key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{_one_line(name)} {int(n)}" for name, n in counts[:TOP_INTENTS])
    if len(counts) > TOP_INTENTS:
        shown += f", +{len(counts) - TOP_INTENTS}"
    return f"intents {shown}" if shown else ""


def _window_span(window: object) -> str:
    """``5 min``: a window's length."""
    if isinstance(window, dict):
        start = parse_iso_ms(_str(window.get("start")))
        end = parse_iso_ms(_str(window.get("end")))
        if start is not None and end is not None and end > start:
            return f"{(end - start) / 60_000:g} min"
    return "rolling"


def analytics_text(record: Mapping[str, Any]) -> str:
    """One analytics record (docs/kafka.md, "Analytics") in a line, without its time: its
    tenant/queue, calls in progress, started and ended in its minute, mean sentiment, mean
    handle time, top intents; then its rolling window's (five minutes) but the intents."""

    def figures(stats: Mapping[str, Any], *, intents: bool = True) -> list[str]:
        parts = [
            f"{name} {int(n)}"
            for name in ("started", "ended")
            if (n := _num(stats.get(name))) is not None
        ]
        parts.append(_mean_figure("sentiment", stats.get("sentiment"), lambda x: f"{x:+.2f}"))
        parts.append(_mean_figure("handle", stats.get("handle_time_s"), format_duration_s))
        top = _intents_figure(stats.get("intents")) if intents else ""
        return [*parts, top] if top else parts

    tenant, queue = (_one_line(_str(record.get(k))) or "?" for k in ("tenant", "queue"))
    group = f"{tenant}/{queue}"
    active = _num(record.get("active"))
    parts = [group, *([f"active {int(active)}"] if active is not None else []), *figures(record)]
    rolling = record.get("rolling")
    if isinstance(rolling, dict):
        span = _window_span(rolling.get("window"))
        parts.append(f"| {span}: " + ", ".join(figures(rolling, intents=False)))
    return "  ".join(parts)


def analytics_time(record: Mapping[str, Any], tz: tzinfo | None = None) -> str:
    """The start of a record's minute, ``HH:MM`` in ``tz`` (default local)."""
    window = record.get("window")
    start = parse_iso_ms(_str(window.get("start"))) if isinstance(window, dict) else None
    if start is None:
        return "--:--"
    return datetime.fromtimestamp(start / 1000, tz).strftime("%H:%M")


def decode_record(value: bytes | None) -> dict[str, Any]:
    """An analytics record's value; ValueError if it is not a JSON object."""
    if value is None:
        raise ValueError("no value")
    record = json.loads(value)
    if not isinstance(record, dict):
        raise ValueError(f"a record should be a JSON object, got {type(record).__name__}")
    return record


# --------------------------------------------------------------------------- I/O: output


class Sink(Protocol):
    def entry(self, entry_id: str, fields: Mapping[bytes, bytes]) -> None: ...

    def record(self, where: str, key: bytes | None, value: bytes | None) -> None: ...

    def notice(self, text: str) -> None: ...

    def close(self) -> None: ...


class _Intake:
    """Parse, filter, drop duplicates: what both outputs do first (pure)."""

    def __init__(self, selection: EventFilter) -> None:
        self.selection = selection
        self.recent = RecentIds()

    def take(self, fields: Mapping[bytes, bytes]) -> Event | EventError | None:
        """The event to show; an EventError for an entry that is not an event (when it may
        belong to what is selected); None for one filtered out or already shown."""
        try:
            event = Event.from_fields(fields)
        except EventError as exc:
            raw_type = fields.get(b"type", b"").decode("utf-8", "replace")
            wanted = self.selection.call_id is None and self.selection.matches_type(raw_type)
            return exc if wanted else None
        if not self.selection.matches(event.call_id, event.type):
            return None
        return event if self.recent.add(event.id) else None


class JsonSink:
    """``--json``: each event's JSON on a line of its own, flushed at once."""

    def __init__(self, selection: EventFilter, out: TextIO, err: TextIO) -> None:
        self._intake = _Intake(selection)
        self._latest = LatestValues()
        self._out, self._err = out, err

    def entry(self, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        taken = self._intake.take(fields)
        if isinstance(taken, EventError):
            self.notice(f"callstream tail: skipped entry {entry_id}: {taken}")
        elif taken is not None:
            self._out.write(json_line(fields[b"event"]) + "\n")
            self._out.flush()

    def record(self, where: str, key: bytes | None, value: bytes | None) -> None:
        """An analytics record: its JSON as it is, on one line."""
        try:
            decode_record(value)
        except ValueError as exc:
            self.notice(f"callstream tail: skipped record {where}: {exc}")
            return
        assert value is not None
        if self._latest.changed(key, value):
            self._out.write(json_line(value) + "\n")
            self._out.flush()

    def notice(self, text: str) -> None:
        self._err.write(text + "\n")
        self._err.flush()

    def close(self) -> None:
        pass


class HumanSink:
    """The default output: :class:`HumanView` through a :class:`Screen`."""

    def __init__(self, selection: EventFilter, view: HumanView, out: TextIO, err: TextIO) -> None:
        self._intake = _Intake(selection)
        self._latest = LatestValues()
        self._view, self._screen = view, Screen()
        self._out, self._err = out, err

    def entry(self, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        taken = self._intake.take(fields)
        if taken is None:
            return
        if self._view.tty:
            self._view.width = shutil.get_terminal_size().columns
        if isinstance(taken, EventError):
            ops = self._view.skipped(entry_id, str(taken))
        else:
            ops = self._view.event(taken)
        self._show(ops)

    def record(self, where: str, key: bytes | None, value: bytes | None) -> None:
        try:
            record = decode_record(value)
        except ValueError as exc:
            self._show(self._view.skipped(where, str(exc)))
            return
        assert value is not None
        if self._latest.changed(key, value):
            self._show(self._view.analytics(record))

    def _show(self, ops: list[Op]) -> None:
        if ops:
            self._out.write(self._screen.render(ops))
            self._out.flush()

    def notice(self, text: str) -> None:
        hide = self._screen.suspend()
        if hide:
            self._out.write(hide)
            self._out.flush()
        self._err.write(text + "\n")
        self._err.flush()
        back = self._screen.resume()
        if back:
            self._out.write(back)
            self._out.flush()

    def close(self) -> None:
        text = self._screen.render(self._view.close())
        if text:
            self._out.write(text)
            self._out.flush()


# --------------------------------------------------------------------------- I/O: reading


async def _last_generated_id(client: aioredis.Redis, key: str) -> str | None:
    """The stream's last generated id; None when there is no such key."""
    try:
        info = await client.xinfo_stream(key)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    last = info["last-generated-id"]
    return last.decode() if isinstance(last, bytes) else str(last)


async def follow(settings: Settings, sink: Sink, *, from_start: bool) -> None:
    """Read ``cs:insights`` into ``sink`` until cancelled.

    Starts at the stream's start (``from_start``) or at its end as it is when Redis first
    answers (so nothing published after that is missed). A failed read is one line through
    ``sink.notice`` and retries, from the last entry read (:func:`resume_position`). Raises
    :class:`BusError` when Redis refuses (wrong password, not a stream).
    """
    key = settings.keys.insights
    client = aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),  # this loop retries, and says so
        client_name="callstream-tail",
    )
    position: str | None = "0-0" if from_start else None
    lost = False
    backoff_s = FIRST_BACKOFF_S
    try:
        while True:
            try:
                if position is None:
                    position = await _last_generated_id(client, key) or "0-0"
                elif lost:
                    position = resume_position(position, await _last_generated_id(client, key))
                reply = cast(
                    XReadReply,
                    await client.xread({key: position}, count=READ_COUNT, block=BLOCK_MS),
                )
            except (AuthenticationError, AuthorizationError) as exc:
                raise BusError(f"redis refused the connection: {exc}") from None
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if not lost:
                    sink.notice(f"callstream tail: redis unavailable ({exc}), retrying…")
                    lost = True
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
                continue
            except ResponseError as exc:
                raise BusError(f"redis refused to read {key}: {exc}") from None
            if lost:
                sink.notice(f"callstream tail: redis is back, reading {key} from {position}")
                lost, backoff_s = False, FIRST_BACKOFF_S
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    position = entry_id.decode()
                    sink.entry(position, fields)
    finally:
        sink.close()
        await client.aclose()


def kafka_client_options(config: KafkaConfig) -> dict[str, Any]:
    """aiokafka's connection options for ``config`` (SASL and/or TLS)."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(config.bootstrap),
        "security_protocol": config.security_protocol,
    }
    if config.uses_tls:
        options["ssl_context"] = ssl.create_default_context(cafile=config.ssl_cafile)
    if config.uses_sasl:
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_username
        options["sasl_plain_password"] = config.sasl_password
    return options


async def follow_kafka(
    config: KafkaConfig, families: Sequence[str], sink: Sink, *, from_start: bool
) -> None:
    """Read the topics of ``families`` (``analytics`` and/or event families) into ``sink``
    until cancelled: analytics records through ``sink.record``, events through
    ``sink.entry``.

    A plain consumer (no group, nothing committed) of every partition, from each topic's end
    as it is when first seen (``from_start``: its beginning). A topic that does not exist yet
    is looked for every 2 s (one line through ``sink.notice``; tail does not create it), and
    read from its beginning once it does. Until the broker first answers, tries again with a
    backoff of up to 2 s; raises :class:`BusError` when it refuses (authentication).
    """
    try:
        from aiokafka import TopicPartition  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the kafka extra is missing
        raise ConfigError("--kafka needs aiokafka: pip install 'callstream[kafka]'") from None
    names = {kafka_topics.topic_name(config.topic_prefix, f): f for f in families}
    consumer = None
    try:
        consumer = await _kafka_consumer(config, sink)
        assigned: set[str] = set()
        first_look = True
        announced = False
        loop = asyncio.get_running_loop()
        next_look = loop.time()
        while True:
            if len(assigned) < len(names) and loop.time() >= next_look:
                # Metadata of all topics (asking for one by name creates it, on brokers that
                # create topics on demand); consumer.topics() asks the same but keeps only
                # the names, and the consumer's own metadata knows no topic made since.
                cluster = await consumer._client.fetch_all_metadata()
                added = [
                    TopicPartition(t, p)
                    for t in names
                    if t not in assigned
                    for p in sorted(cluster.partitions_for_topic(t) or ())
                ]
                if added:
                    old = list(consumer.assignment())
                    positions = {tp: await consumer.position(tp) for tp in old}
                    consumer.assign([*old, *added])
                    for tp, offset in positions.items():
                        consumer.seek(tp, offset)
                    if first_look and not from_start:
                        await consumer.seek_to_end(*added)
                    else:  # from the start, or a topic made since: all it holds is new
                        await consumer.seek_to_beginning(*added)
                    assigned.update(tp.topic for tp in added)
                missing = [t for t in names if t not in assigned]
                if missing and not announced:
                    sink.notice(f"callstream tail: waiting for topic {', '.join(missing)}…")
                    announced = True
                first_look = False
                next_look = loop.time() + TOPIC_CHECK_S
            if not assigned:
                await asyncio.sleep(max(next_look - loop.time(), 0.0))
                continue
            batch = await consumer.getmany(timeout_ms=BLOCK_MS)
            for tp, messages in batch.items():
                family = names.get(tp.topic)
                for message in messages:
                    where = f"{tp.topic}[{tp.partition}]@{message.offset}"
                    if family == kafka_topics.ANALYTICS:
                        sink.record(where, message.key, message.value)
                        continue
                    headers = dict(message.headers or ())
                    fields = {
                        b"type": headers.get(kafka_topics.EVENT_TYPE, b""),
                        b"event": message.value or b"",
                    }
                    sink.entry(where, fields)
    finally:
        sink.close()
        if consumer is not None:
            await consumer.stop()


async def _kafka_consumer(config: KafkaConfig, sink: Sink) -> Any:
    """A started aiokafka consumer: tries again until the broker answers."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415
    from aiokafka.errors import KafkaConnectionError, KafkaError  # noqa: PLC0415

    backoff_s = FIRST_BACKOFF_S
    lost = False
    while True:
        consumer = AIOKafkaConsumer(
            **kafka_client_options(config),
            group_id=None,
            enable_auto_commit=False,
            client_id="callstream-tail",
        )
        try:
            await consumer.start()
        except KafkaConnectionError as exc:
            await consumer.stop()
            if not lost:
                sink.notice(f"callstream tail: kafka unavailable ({exc}), retrying…")
                lost = True
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
            continue
        except KafkaError as exc:
            await consumer.stop()
            raise BusError(f"kafka refused the connection: {exc}") from None
        if lost:
            sink.notice(f"callstream tail: kafka is back ({config.describe()})")
        return consumer


def _pipe_fd(out: TextIO) -> int | None:
    """``out``'s descriptor when it is a pipe, whose closing by its reader can be watched."""
    try:
        fd = out.fileno()
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (OSError, ValueError, AttributeError):
        return None


async def _tail(read: Callable[[], Coroutine[Any, Any, None]], *, pipe_fd: int | None) -> int:
    """``read()`` (:func:`follow`, :func:`follow_kafka`) until SIGINT or SIGTERM (then 0).
    With ``pipe_fd``, stdout's pipe, a reader that goes away (``| head``) ends it too, as
    BrokenPipeError, without waiting for the next event to find out."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    broken = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if pipe_fd is not None:
        # A pipe's writing end never becomes readable: the selector reports it (EPOLLERR)
        # only once its reader has closed it.
        try:
            loop.add_reader(pipe_fd, broken.set)
        except (OSError, ValueError):
            pipe_fd = None
    reading = asyncio.create_task(read())
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(broken.wait())]
    try:
        await asyncio.wait({reading, *waits}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if pipe_fd is not None:
            loop.remove_reader(pipe_fd)
        for task in (reading, *waits):
            task.cancel()
        await asyncio.gather(reading, *waits, return_exceptions=True)
    if not reading.cancelled() and reading.exception() is not None:
        reading.result()  # its error (BusError, BrokenPipeError) is raised here
    if broken.is_set():
        raise BrokenPipeError("stdout was closed")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    selection = EventFilter(
        call_id=check_call_id(args.call) if args.call else None, types=parse_types(args.type)
    )
    out, err = sys.stdout, sys.stderr
    if hasattr(out, "reconfigure"):  # a transcript in any script, on a terminal of any locale
        out.reconfigure(errors="backslashreplace")
    families = parse_kafka_topics(args.kafka_topics) if args.kafka or args.kafka_topics else ()
    kafka = KafkaConfig.from_env(os.environ, settings.prefix) if families else None
    if kafka is not None:  # aiokafka logs each assignment at INFO: stderr is for tail's notices
        aiokafka_log = logging.getLogger("aiokafka")
        aiokafka_log.setLevel(max(logging.WARNING, logging.getLogger().level))
    sink: Sink
    if args.json:
        sink = JsonSink(selection, out, err)
    else:
        tty = out.isatty()
        view = HumanView(
            tty=tty,
            color=use_color(isatty=tty, env=os.environ, no_color=args.no_color),
            show_call=selection.call_id is None,
            show_speech=args.verbose or any(selection.names(t) for t in SPEECH_TYPES),
            width=shutil.get_terminal_size().columns,
        )
        sink = HumanSink(selection, view, out, err)

    def read() -> Coroutine[Any, Any, None]:
        if kafka is not None:
            return follow_kafka(kafka, families, sink, from_start=args.from_start)
        return follow(settings, sink, from_start=args.from_start)

    try:
        return asyncio.run(_tail(read, pipe_fd=_pipe_fd(out)))
    except BrokenPipeError:
        # stdout was closed (| head): stop quietly, and let nothing write to it at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tail",
        help="follow every call's events (cs:insights) in the terminal",
        description="Follow the events of every call (the cs:insights stream): transcripts, "
        "insights and lifecycle events for people, or --json lines for scripts; with --kafka, "
        "the fleet analytics (or event topics) of callstream worker kafka. Runs until "
        "Ctrl-C or SIGTERM (exit 0). See docs/tail.md.",
    )
    parser.add_argument(
        "--call", metavar="ID", help="only this call (its exact id; ID~2 for its second use)"
    )
    parser.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="T,...",
        help="only these event types; patterns allowed (transcript,nlp.*,*.done)",
    )
    parser.add_argument(
        "--from-start",
        "--from-beginning",
        dest="from_start",
        action="store_true",
        help="begin with the oldest event the stream (or Kafka topic) holds "
        "(default: only new ones)",
    )
    parser.add_argument(
        "--kafka",
        action="store_true",
        help="follow the Kafka topic {prefix}.analytics of callstream worker kafka (fleet "
        "figures per tenant/queue and minute) instead of Redis; KAFKA_BOOTSTRAP etc. as for it",
    )
    parser.add_argument(
        "--kafka-topics",
        action="append",
        default=[],
        metavar="FAMILY,...",
        help="with --kafka (implied): these topics instead: analytics and/or event families "
        "(transcripts, insights, summaries, lifecycle, agent, other)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="one event per line as its JSON envelope (partials included), for scripts",
    )
    parser.add_argument("--no-color", action="store_true", help="no ANSI colours (or NO_COLOR=1)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show speech.started/stopped"
    )
    parser.set_defaults(run=_run)
