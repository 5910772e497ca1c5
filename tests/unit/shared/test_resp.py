"""The frame XADD packer against hiredis's own packer, and back through a RESP parser (pure)."""

from __future__ import annotations

from itertools import chain
from typing import Any

import hiredis
from hypothesis import given
from hypothesis import strategies as st

from callstream.shared.entries import InFrame, decode_in, encode_in
from callstream.shared.resp import FrameXadd, bulk

keys = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60)
participants = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
frames = st.builds(
    InFrame,
    seq=st.integers(0, 2**40),
    ts_ms=st.integers(0, 2**45),
    participant=participants,
    channel=st.integers(0, 3),
    silent=st.booleans(),
    pcm=st.binary(max_size=960),
)


@given(keys, st.integers(1, 10**6), frames)
def test_frame_xadd_is_byte_identical_to_hiredis(key: str, maxlen: int, frame: InFrame) -> None:
    args: tuple[Any, ...] = (
        "XADD",
        key,
        "MAXLEN",
        "~",
        maxlen,
        "*",
        *chain(*encode_in(frame).items()),
    )
    expected = hiredis.pack_command(args)
    assert FrameXadd(key, maxlen).pack_frame(frame) == expected


@given(frames)
def test_a_packed_frame_parses_back_to_the_same_entry(frame: InFrame) -> None:
    reader = hiredis.Reader()
    reader.feed(FrameXadd("cs:call:x:in", 3000).pack_frame(frame))
    args = reader.gets()
    assert isinstance(args, list)
    assert args[:6] == [b"XADD", b"cs:call:x:in", b"MAXLEN", b"~", b"3000", b"*"]
    fields = dict(zip(args[6::2], args[7::2], strict=True))
    assert decode_in(fields) == frame
    assert reader.gets() is False  # exactly one command, nothing left over


def test_a_percent_sign_in_the_key_is_not_a_format_directive() -> None:
    frame = InFrame(1, 2, "", 0, False, b"\x00\x01")
    packed = FrameXadd("cs:call:100%d:in", 10).pack_frame(frame)
    assert bulk(b"cs:call:100%d:in") in packed
