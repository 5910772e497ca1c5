"""PCM helpers (pure)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.shared.audio import AudioFormat, chunk, frame_bytes_for, is_silent, mix, rms_dbfs
from callstream.shared.keys import validate_call_id


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


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "id/with/slash", "ünï"])
def test_call_ids_are_validated(bad: str) -> None:
    with pytest.raises(ValueError, match="call id must be"):
        validate_call_id(bad)


def test_good_call_ids_pass() -> None:
    assert validate_call_id("8f2c-aa:1_x.y") == "8f2c-aa:1_x.y"
