"""The runtime's decisions (workers/ownership.py): pure, no Redis."""

from __future__ import annotations

import json

import pytest

from callstream.shared.entries import (
    CallEnded,
    CallStarted,
    InDtmf,
    InEnd,
    InFrame,
    encode_in,
)
from callstream.shared.events import Event
from callstream.workers.api import Inputs
from callstream.workers.ownership import (
    ALL,
    F_DONE,
    F_HANDBACKS,
    F_IN,
    F_STATE,
    Abandon,
    Ack,
    CallInput,
    Checkpoint,
    Ignore,
    Take,
    audio_trim_id,
    backlog_cost,
    classify_missing,
    decide,
    is_over,
    missing_entries,
    needs_stream_check,
    parse_offer,
    resume_point,
)
from tests.helpers import as_redis

CALL = CallStarted("c1", 16000, "mixed", 1_000_000, "gw")


def decide_with(
    offer: CallStarted | CallEnded | str = CALL,
    *,
    how: str = "new",
    owned: tuple[str, ...] = (),
    stopping: bool = False,
    checkpoint: Checkpoint | None = None,
    deliveries: int = 1,
    stream_exists: bool = True,
    max_attempts: int = 5,
) -> object:
    return decide(
        offer,
        how=how,
        owned=owned,
        stopping=stopping,
        checkpoint=checkpoint or Checkpoint(),
        deliveries=deliveries,
        stream_exists=stream_exists,
        max_attempts=max_attempts,
    )


# ------------------------------------------------------------------ taking calls


def test_a_new_call_is_taken_from_the_start() -> None:
    decision = decide_with()
    assert isinstance(decision, Take)
    assert decision.checkpoint.in_id == "0-0"
    assert not decision.checkpoint.exists


def test_a_taken_over_call_resumes_at_its_checkpoint_with_its_state() -> None:
    raw = {F_IN: b"5-3", F_STATE: json.dumps({"start_ts_ms": 7}).encode(), F_HANDBACKS: b"1"}
    checkpoint = Checkpoint.parse(raw)
    decision = decide_with(how="failover", checkpoint=checkpoint, deliveries=3)
    assert isinstance(decision, Take)
    assert (decision.checkpoint.in_id, decision.checkpoint.state) == ("5-3", {"start_ts_ms": 7})
    assert decision.checkpoint.resumed


def test_ended_and_malformed_entries_are_acknowledged_not_served() -> None:
    assert isinstance(decide_with(CallEnded("c1", 5, "normal")), Ack)
    malformed = parse_offer({b"type": b"started", b"call_id": b"x"})
    assert isinstance(malformed, str)
    assert "malformed" in malformed
    assert isinstance(decide_with(malformed), Ack)
    assert isinstance(decide_with(parse_offer(None)), Ack)  # deleted meanwhile


def test_a_call_already_ours_or_offered_while_stopping_is_left_pending() -> None:
    assert isinstance(decide_with(owned=("c1",)), Ignore)
    assert isinstance(decide_with(stopping=True), Ignore)


def test_a_call_this_kind_finished_is_acknowledged() -> None:
    done = Checkpoint.parse({F_IN: b"9-0", F_DONE: b"1"})
    assert isinstance(decide_with(how="failover", checkpoint=done, deliveries=2), Ack)


def test_an_old_call_is_looked_up_and_acknowledged_when_its_streams_expired() -> None:
    now_ms = CALL.time_ms + 2 * 3600 * 1000
    assert needs_stream_check(CALL, now_ms, call_ttl_s=3600)
    assert not needs_stream_check(CALL, CALL.time_ms + 1000, call_ttl_s=3600)
    assert isinstance(decide_with(stream_exists=False), Ack)
    assert isinstance(decide_with(stream_exists=True), Take)


def test_attempts_are_deliveries_minus_hand_backs_and_the_last_one_gives_up() -> None:
    failed = Checkpoint.parse({F_IN: b"1-0", b"error": b"RuntimeError: boom"})
    assert isinstance(decide_with(how="failover", checkpoint=failed, deliveries=5), Take)
    decision = decide_with(how="failover", checkpoint=failed, deliveries=6)
    assert decision == Abandon(CALL, 5, "RuntimeError: boom")
    rolled = Checkpoint.parse({F_IN: b"1-0", F_HANDBACKS: b"4"})
    assert isinstance(decide_with(how="failover", checkpoint=rolled, deliveries=6), Take)
    crashed = decide_with(how="failover", checkpoint=Checkpoint(), deliveries=7)
    assert isinstance(crashed, Abandon)
    assert crashed.error == "its owner stopped answering"


def test_a_damaged_checkpoint_reads_as_a_start() -> None:
    checkpoint = Checkpoint.parse({F_IN: b"nonsense", F_STATE: b"{not json", F_HANDBACKS: b"x"})
    assert (checkpoint.in_id, checkpoint.state, checkpoint.handbacks) == ("0-0", {}, 0)


# ------------------------------------------------------------------ heartbeat


def test_a_missing_entry_is_a_takeover_when_still_in_cs_calls_else_a_trim() -> None:
    owned = {"a": "1-0", "b": "2-0", "c": "3-0", "d": "4-0"}
    missing = missing_entries(owned, mine={"1-0"}, settled={"d"})
    assert missing == ["b", "c"]
    assert classify_missing(missing, [True, False]) == (["b"], ["c"])


# ------------------------------------------------------------------ reading a call


def frame(seq: int) -> dict[bytes, bytes]:
    return as_redis(encode_in(InFrame(seq, 0, "", 0, False, bytes(640))))


def event(event_type: str, data: dict[str, object] | None = None) -> dict[bytes, bytes]:
    return as_redis(Event(f"c1:{event_type}", "c1", event_type, 0, data or {}).fields())


def call_input(inputs: Inputs | None = None) -> CallInput:
    return CallInput(inputs or Inputs(), "in", "events", "0-0", "0-0")


def test_audio_is_delivered_in_order_and_the_end_marker_ends_the_call() -> None:
    reader = call_input()
    assert reader.streams() == {"in": "0-0"}
    batch = reader.receive([(b"1-0", frame(0)), (b"2-0", frame(1))], [], count=100)
    assert [entry_id for entry_id, _ in batch.items] == ["1-0", "2-0"]
    assert reader.streams() == {"in": "2-0"}
    end = as_redis(encode_in(InEnd("normal")))
    batch = reader.receive([(b"3-0", frame(2)), (b"4-0", end)], [], count=100)
    assert [type(item).__name__ for _, item in batch.items] == ["InFrame", "InEnd"]
    assert batch.items[-1] == ("4-0", InEnd("normal"))
    assert reader.complete
    assert reader.streams() == {}


def test_malformed_entries_are_skipped_and_said_so() -> None:
    reader = call_input()
    batch = reader.receive([(b"1-0", {b"kind": b"audio"}), (b"2-0", frame(1))], [], count=100)
    assert [entry_id for entry_id, _ in batch.items] == ["2-0"]
    assert len(batch.skipped) == 1
    assert "1-0" in batch.skipped[0]
    assert batch.last_in == "2-0"


def test_unmixed_participants_are_learnt_from_the_frames() -> None:
    reader = call_input()
    fields = as_redis(encode_in(InFrame(0, 0, "8:acs:bob", 2, False, bytes(640))))
    dtmf = as_redis(encode_in(InDtmf(1, 0, "8:acs:bob", "5")))
    reader.receive([(b"1-0", fields), (b"2-0", dtmf)], [], count=100)
    assert reader.participants == {2: "8:acs:bob"}


def test_events_are_filtered_by_type_and_the_until_event_ends_the_input() -> None:
    reader = call_input(
        Inputs(audio=False, events=frozenset({"transcript"}), until=frozenset({"transcribe.done"}))
    )
    assert reader.streams() == {"events": "0-0"}
    batch = reader.receive(
        [],
        [
            (b"1-0", event("call.started")),
            (b"2-0", event("transcript", {"text": "hi"})),
            (b"3-0", event("call.ended", {"reason": "normal"})),
            (b"4-0", event("transcript", {"text": "late"})),
        ],
        count=100,
    )
    types = [item.type for _, item in batch.items if isinstance(item, Event)]
    assert types == ["transcript", "transcript"]  # finals may follow call.ended
    assert reader.call_ended
    assert not reader.complete
    batch = reader.receive([], [(b"5-0", event("transcribe.done", {"reason": "normal"}))], 100)
    assert reader.streams() == {}  # complete: nothing more to read
    assert batch.items == [("0-0", InEnd("normal"))]  # the reason of the awaited event


def test_audio_and_events_are_merged_in_publication_order() -> None:
    reader = call_input(Inputs(audio=True, events=frozenset({"dtmf"})))
    batch = reader.receive(
        [(b"1-0", frame(0)), (b"3-0", frame(1))],
        [(b"2-0", event("dtmf", {"tone": "1"})), (b"2-1", event("transcript"))],
        count=100,
    )
    assert [entry_id for entry_id, _ in batch.items] == ["1-0", "2-0", "3-0"]
    assert reader.streams() == {"in": "3-0", "events": "2-1"}


def test_a_stream_cut_at_count_holds_back_the_other_streams_later_entries() -> None:
    """Audio came back cut at 2 entries (more follow 2-0): an event published after 2-0 must
    wait for the next read, or it would be delivered before audio published earlier."""
    reader = call_input(Inputs(audio=True, events=frozenset({"dtmf"})))
    batch = reader.receive(
        [(b"1-0", frame(0)), (b"2-0", frame(1))],
        [(b"1-5", event("dtmf")), (b"5-0", event("dtmf"))],
        count=2,
    )
    assert [entry_id for entry_id, _ in batch.items] == ["1-0", "1-5", "2-0"]
    assert reader.streams() == {"in": "2-0", "events": "1-5"}  # 5-0 is read again


def test_both_inputs_must_end_before_the_call_does() -> None:
    reader = call_input(Inputs(audio=True, events=frozenset({"dtmf"})))
    end = as_redis(encode_in(InEnd("hangup")))
    batch = reader.receive([(b"1-0", end)], [], count=100)
    assert not reader.complete
    assert not any(isinstance(item, InEnd) for _, item in batch.items)
    batch = reader.receive([], [(b"2-0", event("call.ended", {"reason": "normal"}))], 100)
    assert reader.streams() == {}  # complete
    assert batch.items[-1][1] == InEnd("hangup")  # the audio's own reason


def test_ending_a_quiet_call_gives_the_handler_its_end() -> None:
    reader = call_input()
    assert reader.end_input("inbound_idle") == [("0-0", InEnd("inbound_idle"))]
    assert reader.complete


def test_a_kind_must_read_something() -> None:
    with pytest.raises(ValueError, match="audio"):
        Inputs(audio=False)


# ------------------------------------------------------------------ resume and trim


def test_the_resume_point_goes_back_to_what_the_handler_still_needs() -> None:
    assert resume_point("10-0", None) == "10-0"
    assert resume_point("10-0", "7-2") == "7-1"
    assert resume_point("10-0", "12-0") == "10-0"  # nothing unprocessed is skipped


def test_audio_is_trimmed_behind_the_slowest_reader_with_the_margin() -> None:
    fast = Checkpoint(in_id="90000-0", exists=True)
    slow = Checkpoint(in_id="60000-4", exists=True)
    assert audio_trim_id([fast, slow], margin_ms=5000) == "55000-0"
    assert audio_trim_id([fast, Checkpoint()], margin_ms=5000) is None  # not taken yet
    assert audio_trim_id([fast, None], margin_ms=5000) is None
    assert audio_trim_id([Checkpoint(in_id="3000-0", exists=True)], margin_ms=5000) is None
    done = Checkpoint(done=True, exists=True)
    assert audio_trim_id([done, slow], margin_ms=0) == "60000-4"  # exact: up to the entry
    assert audio_trim_id([done, done], margin_ms=5000) == ALL


# --------------------------------------------------------------------------- backlog


def test_a_call_is_over_when_its_last_entry_is_the_end_marker_or_old() -> None:
    now_ms = 1_700_000_100_000
    frame = as_redis(encode_in(InFrame(1, 0, "", 0, False, bytes(640))))
    end = as_redis(encode_in(InEnd("normal")))
    recent = f"{now_ms - 1_000}-0".encode()
    stale = f"{now_ms - 61_000}-0".encode()
    assert is_over((recent, end), now_ms, 60.0)  # the gateway ended it
    assert not is_over((recent, frame), now_ms, 60.0)  # streaming
    assert is_over((stale, frame), now_ms, 60.0)  # its gateway went away a minute ago
    assert not is_over(None, now_ms, 60.0)  # no frame yet, or audio deleted: no evidence
    assert not is_over((recent, {b"kind": b"nonsense"}), now_ms, 60.0)


@pytest.mark.parametrize(
    ("speed", "max_calls", "cost"), [(4.0, 50, 4), (2.5, 50, 3), (8.0, 4, 4), (0.5, 10, 1)]
)
def test_a_backlog_call_costs_its_speed_in_calls_at_most_the_replica(
    speed: float, max_calls: int, cost: int
) -> None:
    assert backlog_cost(speed, max_calls) == cost
