"""The gateway's token bucket (pure)."""

from __future__ import annotations

import pytest

from callstream.shared.ratelimit import TokenBucket


def test_a_steady_real_time_sender_is_never_refused() -> None:
    bucket = TokenBucket(250.0, 500.0, now_s=0.0)
    # An unmixed call of four participants: 200 messages a second for ten minutes.
    assert all(bucket.take(i / 200) for i in range(200 * 600))


def test_a_burst_is_allowed_then_a_flood_is_refused() -> None:
    bucket = TokenBucket(250.0, 500.0, now_s=0.0)
    assert all(bucket.take(0.0) for _ in range(500))  # two seconds' worth at once
    assert not bucket.take(0.0)
    assert bucket.take(0.004)  # a token came back 4 ms later
    assert not bucket.take(0.004)


def test_sending_twice_real_time_empties_the_bucket_within_seconds() -> None:
    bucket = TokenBucket(250.0, 500.0, now_s=0.0)
    refused_at = next(i / 500 for i in range(500 * 60) if not bucket.take(i / 500))
    assert 1.9 < refused_at < 2.1  # the burst (500) drains at 250 a second


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(0.0, 10.0, now_s=0.0)
