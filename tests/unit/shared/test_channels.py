"""Stable channel assignment for unmixed participants (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.shared.channels import ChannelMap


def test_participants_keep_their_channel() -> None:
    channels = ChannelMap()
    assert [channels.channel(p) for p in "abcab"] == [0, 1, 2, 0, 1]


def test_fifth_participant_takes_least_recently_heard_slot() -> None:
    channels = ChannelMap()
    for p in "abcd":
        channels.channel(p)
    channels.channel("a")  # b is now the least recently heard
    assert channels.channel("e") == 1
    assert channels.participants() == {"c": 2, "d": 3, "a": 0, "e": 1}


def test_max_channels_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ChannelMap(0)


@given(st.lists(st.sampled_from("abcdefg"), max_size=200))
def test_channels_are_unique_and_in_range(sequence: list[str]) -> None:
    channels = ChannelMap()
    for participant in sequence:
        assert 0 <= channels.channel(participant) < 4
        assigned = list(channels.participants().values())
        assert len(assigned) == len(set(assigned))


@given(st.lists(st.sampled_from("abcd"), max_size=200))
def test_four_or_fewer_participants_never_change_channel(sequence: list[str]) -> None:
    channels = ChannelMap()
    first: dict[str, int] = {}
    for participant in sequence:
        assert first.setdefault(participant, channels.channel(participant)) == channels.channel(
            participant
        )
