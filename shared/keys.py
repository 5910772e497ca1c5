"""Redis key names of the stream contract (see docs/architecture.md).

Every key starts with a configurable prefix (default ``cs``) so several deployments can share a
Redis. Call ids are embedded verbatim; :func:`validate_call_id` keeps them to a safe alphabet.

A call id the platform reuses for a new connection after its call ended names a new call: its
incarnation (2, 3, …) is appended after ``~``, a character call ids cannot hold
(:func:`incarnation_id`), so its keys, events and ids are its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from callstream.shared.errors import InvalidCallId

# Letters, digits, '_', '-' and single dots, from a letter or digit: what ACS's call connection
# ids (GUIDs) and any sane id are made of, and nothing that means something in a key name
# (':' separates its parts, '..' and '~' are not allowed).
_CALL_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,127}$")
INCARNATION_SEPARATOR = "~"


def validate_call_id(call_id: str) -> str:
    """Return ``call_id`` if it is 1–128 characters of letters, digits, ``_``, ``-`` and single
    dots, starting with a letter or digit; else raise
    :class:`~callstream.shared.errors.InvalidCallId` (a ValueError)."""
    if not _CALL_ID.fullmatch(call_id):
        raise InvalidCallId(
            "call id must be 1-128 characters of letters, digits, '_', '-' and single dots, "
            f"starting with a letter or digit; got {call_id[:140]!r}"
        )
    return call_id


def incarnation_id(call_id: str, incarnation: int) -> str:
    """The id a call is published under: ``call_id`` for its first connection, ``call_id~n``
    for the n-th connection that used the same id (after the previous one ended)."""
    return call_id if incarnation <= 1 else f"{call_id}{INCARNATION_SEPARATOR}{incarnation}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "cs"

    @property
    def calls(self) -> str:
        """Lifecycle stream: one ``started`` and one ``ended`` entry per call."""
        return f"{self.prefix}:calls"

    @property
    def insights(self) -> str:
        """Global insight topic: every event of every call (capped)."""
        return f"{self.prefix}:insights"

    def call_in(self, call_id: str) -> str:
        """Inbound frames, DTMF and the end marker of one call."""
        return f"{self.prefix}:call:{call_id}:in"

    def call_out(self, call_id: str) -> str:
        """Audio, stop and mark entries to play into one call."""
        return f"{self.prefix}:call:{call_id}:out"

    def call_events(self, call_id: str) -> str:
        """Events (transcripts, DTMF, lifecycle, ...) of one call."""
        return f"{self.prefix}:call:{call_id}:events"

    def call_keys(self, call_id: str) -> tuple[str, str, str]:
        """All per-call stream keys (for TTLs and cleanup)."""
        return (self.call_in(call_id), self.call_out(call_id), self.call_events(call_id))

    def lease(self, call_id: str) -> str:
        """Which connection holds a call id now, fleet-wide (renewed while it lives)."""
        return f"{self.prefix}:lease:{call_id}"

    def incarnations(self, call_id: str) -> str:
        """How many connections have used a call id (kept as long as cs:calls keeps calls)."""
        return f"{self.prefix}:incarnations:{call_id}"

    @property
    def kinds(self) -> str:
        """Hash of the worker kinds that have run: kind → its inputs (JSON)."""
        return f"{self.prefix}:kinds"

    def group(self, worker_kind: str) -> str:
        """Consumer group name on :attr:`calls` for one worker kind."""
        return f"{self.prefix}:workers:{worker_kind}"

    def checkpoint(self, worker_kind: str, call_id: str) -> str:
        """Hash holding a worker kind's checkpoint for one call."""
        return f"{self.prefix}:ckpt:{worker_kind}:{call_id}"
