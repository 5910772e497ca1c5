"""How many entries per stream a replica's shared read asks for (pure)."""

from __future__ import annotations

import pytest

from callstream.workers.runtime import MIN_READ_COUNT, READ_BUDGET, READ_COUNT, read_count


@pytest.mark.parametrize(
    ("streams", "count"),
    [(0, READ_COUNT), (1, READ_COUNT), (10, READ_COUNT), (20, 50), (200, MIN_READ_COUNT)],
)
def test_a_read_shares_its_budget_between_its_streams(streams: int, count: int) -> None:
    assert READ_BUDGET == 1000
    assert read_count(streams) == count


def test_a_read_never_asks_for_less_than_the_floor() -> None:
    assert read_count(10_000) == MIN_READ_COUNT
