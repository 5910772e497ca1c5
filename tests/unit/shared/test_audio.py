"""PCM helpers (pure)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.shared.audio import AudioFormat, chunk, frame_bytes_for, is_silent, mix, rms_dbfs
from callstream.shared.errors import InvalidCallId
from callstream.shared.keys import incarnation_id, validate_call_id


def pcm(*samples: int) -> bytes:
    return np.array(samples, dtype="<i2").tobytes()


def test_frame_sizes() -> None:
    assert frame_bytes_for(16000) == 640
    assert AudioFormat(24000).frame_bytes == 960
    assert AudioFormat(16000).duration_ms(640) == 20.0


def test_mix_saturates_instead_of_wrapping() -> None:
    assert mix([pcm(30000, -30000, 5), pcm(10000, -10000, 6)]) == pcm(32767, -32768, 11)


def test_mix_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="equal length"):
        mix([pcm(1), pcm(1, 2)])


@given(st.binary(max_size=3000), st.integers(1, 1000))
def test_chunk_pads_only_the_tail(data: bytes, size: int) -> None:
    pieces = chunk(data, size)
    assert all(len(p) == size for p in pieces)
    assert b"".join(pieces)[: len(data)] == data
    assert set(b"".join(pieces)[len(data) :]) <= {0}
    assert b"".join(chunk(data, size, pad=False)) == data[: len(data) // size * size]


def test_silence_detection() -> None:
    assert rms_dbfs(bytes(640)) == float("-inf")
    assert is_silent(bytes(640))
    assert not is_silent(pcm(*([8000, -8000] * 160)))
    assert rms_dbfs(pcm(*([32767, -32767] * 160))) == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize(
    "bad",
    ["", "a b", "x" * 129, "id/with/slash", "ünï", "a:b", "a..b", "..", ".a", "-a", "a~2", "a*"],
)
def test_call_ids_are_validated(bad: str) -> None:
    """Nothing that means something in a key name: ':' separates its parts, '..' and a
    leading dot or dash invite confusion, '~' marks an incarnation, '*' is a pattern."""
    with pytest.raises(InvalidCallId, match="call id must be"):
        validate_call_id(bad)


def test_good_call_ids_pass() -> None:
    for good in ("8f2c-aa_1.x.y", "421f0b00-5c3e-4b8a-9a39-0b7f3e2c8d11", "A", "x" * 128):
        assert validate_call_id(good) == good


def test_a_reused_id_is_published_under_its_incarnation() -> None:
    assert incarnation_id("call-1", 1) == "call-1"
    assert incarnation_id("call-1", 3) == "call-1~3"
