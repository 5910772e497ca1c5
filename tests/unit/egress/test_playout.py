"""The egress playout schedule (pure: time is passed in)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.egress.playout import Action, MarkReached, Playout, SendFrame, SendStop
from callstream.shared.entries import OutAudio, OutMark, OutPause, OutResume, OutStop

FRAME = 640
LEAD = 0.1


def run_until_idle(
    playout: Playout, now: float, step: float = 0.005, limit_s: float = 3600
) -> tuple[list[Action], float]:
    """Advance time in ``step`` increments until the playout is idle."""
    actions: list[Action] = []
    end = now + limit_s
    while not playout.idle and now < end:
        actions += playout.due(now)
        now += step
    return actions, now


def frames(actions: list[Action]) -> list[SendFrame]:
    return [a for a in actions if isinstance(a, SendFrame)]


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=30))
def test_audio_of_any_chunking_is_delivered_exactly_and_padded_only_at_the_end(
    sizes: list[int],
) -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    data = bytes((i * 7 + 3) % 251 for i in range(sum(sizes)))
    offset = 0
    for size in sizes:  # all chunks arrive at once, faster than real time
        playout.push(OutAudio(data[offset : offset + size]), 100.0)
        offset += size
    actions, _ = run_until_idle(playout, 100.0)
    sent = b"".join(f.pcm for f in frames(actions))
    assert all(len(f.pcm) == FRAME for f in frames(actions))
    assert sent[: len(data)] == data
    assert sent[len(data) :] == bytes(len(sent) - len(data))
    assert len(sent) - len(data) < FRAME


@given(st.lists(st.floats(0.0, 0.05), min_size=50, max_size=200))
def test_frames_are_never_released_more_than_the_lead_ahead(gaps: list[float]) -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    now = 10.0
    playout.push(OutAudio(bytes(FRAME * 100)), now)
    for gap in gaps:
        for frame in frames(playout.due(now)):
            assert frame.slot_s - LEAD <= now + 1e-9
        now += gap


def test_continuous_audio_follows_an_absolute_schedule_without_drift() -> None:
    """Ten minutes of audio, polled at irregular times: slot k is exactly t0 + k * 20 ms."""
    playout = Playout(FRAME, lead_s=LEAD)
    total = 10 * 60 * 50
    t0 = 1000.0
    playout.push(OutAudio(bytes(FRAME * total)), t0)
    now = t0
    sent: list[SendFrame] = []
    step = 0
    while len(sent) < total:
        sent += frames(playout.due(now))
        step += 1
        now += 0.013 + 0.011 * (step % 3)  # irregular wake-ups, never aligned to 20 ms
    assert len(sent) == total
    worst = max(abs(f.slot_s - (t0 + k * 0.020)) for k, f in enumerate(sent))
    assert worst < 1e-6
    assert playout.restarts == 0


def test_a_partial_tail_is_held_until_its_slot_then_padded() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(bytes(FRAME + 100)), 0.0)
    first = playout.due(0.0)
    assert frames(first) == [SendFrame(bytes(FRAME), 0.0)]
    assert playout.due(0.015) == []  # the tail's slot (0.020) has not come: more may follow
    playout.push(OutAudio(b"\x01" * (FRAME - 100)), 0.015)
    [second] = frames(playout.due(0.015))
    assert second.pcm == bytes(100) + b"\x01" * (FRAME - 100)  # joined, not padded


def test_a_lone_tail_is_padded_when_its_slot_arrives() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(b"\x02" * 10), 0.0)
    assert playout.due(0.0) == []  # held for one frame: the rest of it may be on its way
    assert playout.next_wakeup(0.0) == pytest.approx(0.020)
    assert playout.due(0.020) == [SendFrame(b"\x02" * 10 + bytes(FRAME - 10), 0.020)]
    assert playout.idle


def test_stop_drops_everything_and_is_released_at_once() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(bytes(FRAME * 50 + 3)), 0.0)
    playout.push(OutMark("never"), 0.0)
    assert len(frames(playout.due(0.0))) == 6  # slots 0..100 ms
    playout.push(OutStop(), 0.001)
    assert playout.due(0.001) == [SendStop()]
    assert playout.idle
    assert playout.next_wakeup(0.002) is None


def test_audio_after_a_stop_starts_a_new_schedule() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(bytes(FRAME * 50)), 0.0)
    playout.due(0.0)
    playout.push(OutStop(), 4.0)
    playout.push(OutAudio(b"\x03" * FRAME), 4.0)
    assert playout.due(5.0) == [SendStop(), SendFrame(b"\x03" * FRAME, 5.0)]
    assert playout.restarts == 0


def test_marks_are_reached_in_order_when_the_audio_before_them_has_played() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(bytes(FRAME * 5)), 0.0)  # 100 ms
    playout.push(OutMark("a"), 0.0)
    playout.push(OutAudio(bytes(FRAME * 5)), 0.0)
    playout.push(OutMark("b"), 0.0)
    at: dict[str, float] = {}
    now = 0.0
    released_after_a = 0
    while not playout.idle:
        for action in playout.due(now):
            if isinstance(action, MarkReached):
                at[action.name] = now
            elif "a" not in at and isinstance(action, SendFrame) and action.slot_s >= 0.1:
                released_after_a += 1
        now += 0.001
    assert list(at) == ["a", "b"]
    assert at["a"] == pytest.approx(0.100, abs=0.0011)
    assert at["b"] == pytest.approx(0.200, abs=0.0011)
    assert released_after_a == 5  # the audio after a mark is released ahead as usual


def test_a_dry_queue_restarts_the_schedule_at_now_and_counts_it() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(bytes(FRAME)), 0.0)
    assert frames(playout.due(0.0))[0].slot_s == 0.0
    playout.push(OutAudio(bytes(FRAME)), 1.0)
    assert frames(playout.due(1.0))[0].slot_s == 1.0
    assert playout.restarts == 1


@settings(max_examples=50)
@given(st.lists(st.tuples(st.floats(0.0, 0.2), st.integers(1, 3000)), min_size=1, max_size=40))
def test_next_wakeup_never_misses_due_work(arrivals: list[tuple[float, int]]) -> None:
    """Sleeping until next_wakeup (or the next arrival) delivers everything, in order."""
    playout = Playout(FRAME, lead_s=LEAD)
    now = 0.0
    pushed = bytearray()
    sent = bytearray()
    for gap, size in arrivals:
        arrival = now + gap
        while True:
            wake = playout.next_wakeup(now)
            if wake is None or wake > arrival:
                break
            now = max(now, wake)
            sent += b"".join(f.pcm for f in frames(playout.due(now)))
        now = arrival
        chunk = bytes(1 + (len(pushed) + i) % 255 for i in range(size))  # never 0: padding is
        pushed += chunk
        playout.push(OutAudio(chunk), now)
        sent += b"".join(f.pcm for f in frames(playout.due(now)))
    while (wake := playout.next_wakeup(now)) is not None:
        now = max(now, wake)
        sent += b"".join(f.pcm for f in frames(playout.due(now)))
    # Everything arrives, in order; padding (zeros) only where the producer fell behind.
    assert bytes(b for b in sent if b) == bytes(pushed)


def test_small_chunks_arriving_in_real_time_are_joined_without_padding() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    sent = bytearray()
    for k in range(100):  # 10 ms of audio every 10 ms
        now = k * 0.010
        playout.push(OutAudio(b"\x05" * (FRAME // 2)), now)
        sent += b"".join(f.pcm for f in frames(playout.due(now)))
    assert sent == b"\x05" * (FRAME * 50)


def test_bad_construction_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive even"):
        Playout(641)
    with pytest.raises(ValueError, match="must not be negative"):
        Playout(640, lead_s=-1)


def numbered(count: int) -> bytes:
    """``count`` frames, frame i filled with byte i: which frame is which can be told."""
    return b"".join(bytes([i]) * FRAME for i in range(count))


def test_a_pause_stops_the_platform_and_keeps_what_it_had_not_played() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(numbered(20)), 0.0)
    before = frames(playout.due(0.0))  # frames 0..5 released (slots 0..100 ms)
    before += frames(playout.due(0.050))  # 6..7
    assert [f.pcm[0] for f in before] == list(range(8))
    playout.push(OutPause(), 0.050)  # frames 0-1 played, 2 is playing: 2.. not heard whole
    assert playout.due(0.050) == [SendStop()]
    assert playout.paused
    assert playout.next_wakeup(0.051) is None
    assert playout.due(3.0) == []  # held, however long
    assert not playout.idle
    playout.push(OutResume(), 3.0)
    after, _ = run_until_idle(playout, 3.0)
    assert [f.pcm[0] for f in frames(after)] == list(range(2, 20))  # on from frame 2
    assert frames(after)[0].slot_s == pytest.approx(3.0)  # a new schedule
    assert SendStop() not in after


def test_marks_not_reached_at_a_pause_are_reached_after_the_audio_before_them() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(numbered(3)), 0.0)  # frames 0, 1, 2
    playout.push(OutMark("start"), 0.0)
    playout.push(OutAudio(numbered(13)[3 * FRAME :]), 0.0)  # frames 3..12
    playout.push(OutMark("end"), 0.0)
    early = playout.due(0.0) + playout.due(0.030)  # "start" released, due at 60 ms
    assert not any(isinstance(a, MarkReached) for a in early)
    playout.push(OutPause(), 0.030)  # frame 1 is playing
    assert playout.due(0.030) == [SendStop()]
    playout.push(OutResume(), 1.0)
    after: list[Action] = []
    reached_at: dict[str, float] = {}
    now = 1.0
    while not playout.idle:
        for action in playout.due(now):
            after.append(action)
            if isinstance(action, MarkReached):
                reached_at[action.name] = now
        now += 0.001
    order = [
        f"mark {a.name}" if isinstance(a, MarkReached) else a.pcm[0]
        for a in after
        if isinstance(a, MarkReached | SendFrame)
    ]
    # Frames are released ahead of their slot, marks when their slot comes: "start" is
    # reached after frames 1 and 2 have played, i.e. once frame 3's slot begins.
    assert [x for x in order if isinstance(x, int)] == list(range(1, 13))
    assert [x for x in order if isinstance(x, str)] == ["mark start", "mark end"]
    assert reached_at["start"] == pytest.approx(1.040, abs=0.0011)  # frames 1, 2 from 1.0 s
    assert reached_at["end"] == pytest.approx(1.240, abs=0.0011)  # and 3..12


def test_a_mark_reached_before_a_pause_is_not_held() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(numbered(1)), 0.0)
    playout.push(OutMark("first-done"), 0.0)
    playout.push(OutAudio(numbered(10)), 0.0)
    assert not any(isinstance(a, MarkReached) for a in playout.due(0.0))  # due at 20 ms
    playout.push(OutPause(), 0.025)  # after the mark's slot, before anyone looked
    assert playout.due(0.025) == [SendStop(), MarkReached("first-done")]


def test_a_stop_while_paused_drops_everything() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutAudio(numbered(20)), 0.0)
    playout.due(0.0)
    playout.push(OutPause(), 0.01)
    playout.push(OutMark("never"), 0.01)
    assert playout.due(0.01) == [SendStop()]
    playout.push(OutStop(), 0.5)
    assert playout.due(0.5) == [SendStop()]
    assert playout.idle
    assert not playout.paused
    playout.push(OutAudio(numbered(1)), 0.6)  # the next reply plays at once
    assert frames(playout.due(0.6)) == [SendFrame(numbered(1), 0.6)]


def test_a_pause_with_nothing_playing_sends_no_stop_and_holds_what_comes() -> None:
    playout = Playout(FRAME, lead_s=LEAD)
    playout.push(OutPause(), 0.0)
    playout.push(OutAudio(numbered(2)), 0.1)
    assert playout.due(0.2) == []
    playout.push(OutPause(), 0.2)  # twice: no effect
    playout.push(OutResume(), 0.3)
    assert [f.pcm[0] for f in frames(playout.due(0.3))] == [0, 1]
