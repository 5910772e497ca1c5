"""Which participants an unmixed ACS call streams: the four most dominant speakers (pure).

Dominance is short-term energy: an exponential moving average of each participant's frame power
with a ~200 ms time constant. A participant keeps its stream slot while it stays among the most
dominant; a non-streamed participant takes the weakest slot only when clearly louder (by
``hysteresis_db``), so slots (and the gateway's channels) do not flap.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_STREAMS = 4


class DominantSpeakers:
    """Tracks participants' energy and picks up to ``max_streams`` of them per 20 ms frame."""

    def __init__(
        self,
        participants: int,
        *,
        max_streams: int = MAX_STREAMS,
        time_constant_ms: float = 200.0,
        frame_ms: float = 20.0,
        hysteresis_db: float = 6.0,
    ) -> None:
        if participants < 1:
            raise ValueError(f"need at least one participant, got {participants}")
        self._alpha = min(1.0, frame_ms / time_constant_ms)
        self._ratio = 10 ** (hysteresis_db / 10)
        self._energy = [0.0] * participants
        # slot -> participant; the first `max_streams` participants start in the slots.
        self._slots = list(range(min(participants, max_streams)))

    @property
    def energies(self) -> list[float]:
        return list(self._energy)

    def update(self, powers: Sequence[float]) -> list[int]:
        """Feed each participant's mean power for this frame; returns participants by slot."""
        if len(powers) != len(self._energy):
            raise ValueError(f"expected {len(self._energy)} powers, got {len(powers)}")
        a = self._alpha
        self._energy = [e + a * (p - e) for e, p in zip(self._energy, powers, strict=True)]
        if len(self._slots) < len(self._energy):
            self._rebalance()
        return list(self._slots)

    def _rebalance(self) -> None:
        energy = self._energy
        streamed = set(self._slots)
        waiting = sorted(
            (p for p in range(len(energy)) if p not in streamed), key=lambda p: -energy[p]
        )
        for candidate in waiting:
            weakest_slot = min(range(len(self._slots)), key=lambda s: energy[self._slots[s]])
            if energy[candidate] > energy[self._slots[weakest_slot]] * self._ratio + 1e-12:
                self._slots[weakest_slot] = candidate
            else:
                break
