"""Stable channel slots for unmixed participants (pure).

ACS sends up to four participant streams at a time, the most dominant speakers. Workers keep one
recognizer per channel, so a participant must keep its channel while it is among the four; a
fifth participant takes the slot of the one heard least recently.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_CHANNELS = 4


class ChannelMap:
    """Maps participant raw ids to channels ``0 .. max_channels-1``."""

    __slots__ = ("_by_participant", "_max")

    def __init__(self, max_channels: int = MAX_CHANNELS) -> None:
        if max_channels < 1:
            raise ValueError(f"max_channels must be at least 1, got {max_channels}")
        self._max = max_channels
        # participant -> channel, least recently heard first.
        self._by_participant: OrderedDict[str, int] = OrderedDict()

    def channel(self, participant: str) -> int:
        """The participant's channel; assigns one (evicting the least recent) if it has none."""
        slots = self._by_participant
        found = slots.get(participant)
        if found is not None:
            slots.move_to_end(participant)
            return found
        if len(slots) < self._max:
            taken = set(slots.values())
            assigned = next(c for c in range(self._max) if c not in taken)
        else:
            _, assigned = slots.popitem(last=False)
        slots[participant] = assigned
        return assigned

    def participants(self) -> dict[str, int]:
        """Current assignment (a copy)."""
        return dict(self._by_participant)
