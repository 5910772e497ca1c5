"""Redis key names of the stream contract (see docs/architecture.md).

Every key starts with a configurable prefix (default ``cs``) so several deployments can share a
Redis. Call ids are embedded verbatim; :func:`validate_call_id` keeps them to a safe alphabet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from callstream.shared.errors import InvalidCallId

_CALL_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def validate_call_id(call_id: str) -> str:
    """Return ``call_id`` if it is 1–128 chars of ``[A-Za-z0-9._:-]``, else raise
    :class:`~callstream.shared.errors.InvalidCallId` (a ValueError)."""
    if not _CALL_ID.fullmatch(call_id):
        raise InvalidCallId(
            f"call id must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
            f"got {call_id!r}"
        )
    return call_id


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
