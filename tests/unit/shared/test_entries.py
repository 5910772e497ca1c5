"""Stream-entry encoding round trips (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.shared.entries import (
    CallEnded,
    CallStarted,
    EntryError,
    InDtmf,
    InEnd,
    InFrame,
    OutAudio,
    OutEntry,
    OutMark,
    OutPause,
    OutResume,
    OutStop,
    decode_call,
    decode_in,
    decode_out,
    encode_call,
    encode_in,
    encode_out,
    parse_id,
    previous_id,
)
from tests.helpers import as_redis

participants = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


@given(
    st.integers(0, 2**40),
    st.integers(0, 2**45),
    participants,
    st.integers(0, 3),
    st.booleans(),
    st.binary(max_size=960),
)
def test_in_frame_round_trips(
    seq: int, ts: int, participant: str, channel: int, silent: bool, pcm: bytes
) -> None:
    frame = InFrame(seq, ts, participant, channel, silent, pcm)
    assert decode_in(as_redis(encode_in(frame))) == frame


def test_pcm_is_stored_raw_not_base64() -> None:
    fields = encode_in(InFrame(0, 0, "", 0, False, b"\x00\xff" * 320))
    assert fields[b"pcm"] == b"\x00\xff" * 320


@given(st.integers(0, 10**6), participants, st.sampled_from(list("0123456789*#ABCD")))
def test_dtmf_round_trips(seq: int, participant: str, tone: str) -> None:
    entry = InDtmf(seq, 1_700_000_000_000, participant, tone)
    assert decode_in(as_redis(encode_in(entry))) == entry


def test_end_round_trips() -> None:
    assert decode_in(as_redis(encode_in(InEnd("normal")))) == InEnd("normal")


@given(
    st.one_of(
        st.builds(OutAudio, st.binary(max_size=5000)),
        st.just(OutStop()),
        st.builds(OutMark, st.text(max_size=30)),
        st.just(OutPause()),
        st.just(OutResume()),
    )
)
def test_out_entries_round_trip(entry: OutEntry) -> None:
    assert decode_out(as_redis(encode_out(entry))) == entry


@pytest.mark.parametrize(
    "entry",
    [
        CallStarted("call-1", 16000, "mixed", 1_700_000_000_000, "gw-1"),
        CallStarted("c:2", 24000, "unmixed", 1, "gw"),
        CallEnded("call-1", 1_700_000_000_500, "normal"),
    ],
)
def test_call_entries_round_trip(entry: CallStarted | CallEnded) -> None:
    assert decode_call(as_redis(encode_call(entry))) == entry


def test_started_entry_carries_frame_bytes() -> None:
    fields = encode_call(CallStarted("c", 24000, "mixed", 0, "gw"))
    assert fields[b"frame_bytes"] == 960


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({b"kind": b"video"}, "kind should be audio, dtmf or end, got b'video'"),
        ({b"seq": b"1"}, "lacks field 'kind'"),
        ({b"kind": b"audio", b"seq": b"x"}, "'seq' should be an integer"),
    ],
)
def test_bad_in_entries_raise_entry_error(raw: dict[bytes, bytes], message: str) -> None:
    with pytest.raises(EntryError, match=message):
        decode_in(raw)


def test_bad_call_entries_raise_entry_error() -> None:
    with pytest.raises(EntryError, match="mode should be mixed or unmixed"):
        decode_call(
            {
                b"type": b"started",
                b"call_id": b"c",
                b"rate": b"16000",
                b"mode": b"stereo",
                b"time": b"0",
                b"gateway": b"g",
            }
        )
    with pytest.raises(EntryError, match="type should be started or ended"):
        decode_call({b"type": b"paused"})
    with pytest.raises(EntryError, match="kind should be audio, stop, mark, pause or resume"):
        decode_out({b"kind": b"hold"})


@given(st.integers(0, 2**48), st.integers(0, 2**64 - 1))
def test_previous_id_is_the_largest_id_before(ms: int, seq: int) -> None:
    entry_id = f"{ms}-{seq}"
    before = previous_id(entry_id)
    if (ms, seq) == (0, 0):
        assert before == "0-0"
    else:
        assert parse_id(before) < parse_id(entry_id)
        # Nothing fits between them.
        b_ms, b_seq = parse_id(before)
        assert (b_ms, b_seq + 1) == (ms, seq) or (
            b_seq == 2**64 - 1 and b_ms + 1 == ms and seq == 0
        )


def test_parse_id_refuses_what_is_not_an_id() -> None:
    with pytest.raises(EntryError):
        parse_id("abc-1")


def test_an_entry_that_is_not_utf_8_where_text_is_expected_is_an_entry_error() -> None:
    fields = as_redis(encode_in(InFrame(1, 2, "x", 0, False, bytes(640))))
    fields[b"participant"] = b"\xff\xfe"
    with pytest.raises(EntryError, match="UTF-8"):
        decode_in(fields)
