"""A token bucket: how the gateway tells a client sending faster than real time (pure, no I/O).

ACS sends 50 frames a second per participant it streams (four at most), so a call's messages
arrive at a steady rate; a client that sends much faster for long is broken or hostile, and
would otherwise grow the gateway's memory and Redis without bound.
"""

from __future__ import annotations


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; each message takes one."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate_per_s: float, burst: float, now_s: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(
                f"need a positive rate and a burst of at least 1, got {rate_per_s}, {burst}"
            )
        self._rate = rate_per_s
        self._burst = burst
        self._tokens = burst
        self._at = now_s

    def take(self, now_s: float) -> bool:
        """One message at ``now_s`` (monotonic seconds): False when the bucket is empty."""
        tokens = self._tokens + (now_s - self._at) * self._rate
        self._at = now_s
        tokens = min(tokens, self._burst)
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True
