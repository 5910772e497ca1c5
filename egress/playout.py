"""Playout schedule of one call (sans-I/O): what to send, and when.

Fed the entries of a call's out stream and asked, with the current monotonic time, which actions
are due. It never reads a clock. Frame *k* of a continuous run is due at ``t0 + k * frame_s``
(an absolute schedule: timer error never accumulates) and is released ``lead_s`` before its slot
so the platform's buffer stays short and a stop takes effect quickly.

* Audio of any length is re-chunked into frames; a partial tail is held while more audio may
  follow, and is zero-padded and released when its own slot arrives (and it has waited at least
  one frame) with nothing more queued, or when a mark closes the run.
* A stop drops everything queued (and the held tail) and is released at once.
* A mark is reached when playback gets to it: the slot after the audio before it has begun. It
  does not hold back the audio after it, which is released ahead as usual.
* A pause (a possible barge-in) sends a stop at once, so the platform drops the ``lead_s`` it
  holds, and takes back what was released but not yet heard (frames whose slot has not ended,
  marks not reached) to the front of the queue; nothing is released until a resume, which
  plays on from there on a new schedule. A stop drops it all, paused or not.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from callstream.shared.entries import OutAudio, OutEntry, OutMark, OutPause, OutResume, OutStop


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Send this frame; ``slot_s`` is when it starts playing (monotonic seconds)."""

    pcm: bytes
    slot_s: float


@dataclass(frozen=True, slots=True)
class SendStop:
    """Tell the platform to drop what it has queued."""


@dataclass(frozen=True, slots=True)
class MarkReached:
    """Playback reached the mark called ``name``."""

    name: str


Action = SendFrame | SendStop | MarkReached


class Playout:
    """The schedule of one call. Times are monotonic seconds (``loop.time()``)."""

    __slots__ = (
        "_frame_bytes",
        "_frame_s",
        "_lead_s",
        "_marks",
        "_next_slot",
        "_paused",
        "_queue",
        "_sent",
        "_stop_pending",
        "_tail",
        "_tail_since",
        "restarts",
    )

    def __init__(self, frame_bytes: int, *, frame_s: float = 0.020, lead_s: float = 0.100) -> None:
        if frame_bytes <= 0 or frame_bytes % 2:
            raise ValueError(f"frame_bytes must be a positive even number, got {frame_bytes}")
        if lead_s < 0:
            raise ValueError(f"lead_s must not be negative, got {lead_s}")
        self._frame_bytes = frame_bytes
        self._frame_s = frame_s
        self._lead_s = lead_s
        self._queue: deque[bytes | OutMark] = deque()
        self._marks: deque[tuple[float, str]] = deque()  # (slot time, name), after release
        self._tail = b""
        self._tail_since = 0.0  # when the held tail began to wait
        self._next_slot: float | None = None
        self._stop_pending = False
        self._paused = False
        # Released frames whose slot may not have ended: what a pause takes back.
        self._sent: deque[tuple[float, bytes]] = deque()
        self.restarts = 0  # times audio resumed after the schedule had fallen behind the clock

    @property
    def queued_frames(self) -> int:
        return sum(1 for item in self._queue if isinstance(item, bytes))

    @property
    def backlog(self) -> int:
        """Frames (and marks) queued: an upper bound of :attr:`queued_frames`, in O(1)."""
        return len(self._queue)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def idle(self) -> bool:
        """Nothing queued, held or pending."""
        return not (self._queue or self._tail or self._stop_pending or self._marks)

    def push(self, entry: OutEntry, now_s: float) -> None:
        """Queue one out-stream entry that arrived at ``now_s``."""
        if isinstance(entry, OutAudio):
            data = self._tail + entry.pcm
            whole = len(data) - len(data) % self._frame_bytes
            size = self._frame_bytes
            self._queue.extend(data[i : i + size] for i in range(0, whole, size))
            if not self._tail or whole:
                self._tail_since = now_s
            self._tail = data[whole:]
        elif isinstance(entry, OutMark):
            self._release_tail()
            self._queue.append(entry)
        elif isinstance(entry, OutStop):
            # Marks behind dropped audio are never reached: they are dropped too.
            self._queue.clear()
            self._marks.clear()
            self._sent.clear()
            self._tail = b""
            self._stop_pending = True
            self._next_slot = None
            self._paused = False
        elif isinstance(entry, OutPause):
            if not self._paused:
                self._pause(now_s)
        elif isinstance(entry, OutResume):
            self._paused = False

    def due(self, now_s: float) -> list[Action]:
        """Every action due at ``now_s``, in order."""
        actions: list[Action] = []
        if self._stop_pending:
            self._stop_pending = False
            actions.append(SendStop())
        queue = self._queue
        while not self._paused:
            if not queue:
                if not self._tail:
                    break
                if self._tail_release(now_s) > now_s:  # more audio may follow: hold the tail
                    break
                self._release_tail()
                continue
            item = queue[0]
            if isinstance(item, OutMark):
                # Reached when the audio queued before it has played: at the next slot.
                queue.popleft()
                at_s = self._next_slot if self._next_slot is not None else now_s
                self._marks.append((at_s, item.name))
                continue
            slot = self._slot_for_next_frame(now_s, count_restart=True)
            if slot - self._lead_s > now_s:
                break
            queue.popleft()
            actions.append(SendFrame(item, slot))
            self._next_slot = slot + self._frame_s
            self._sent.append((slot, item))
        while self._sent and self._sent[0][0] + self._frame_s <= now_s:
            self._sent.popleft()
        while self._marks and self._marks[0][0] <= now_s:
            actions.append(MarkReached(self._marks.popleft()[1]))
        return actions

    def next_wakeup(self, now_s: float) -> float | None:
        """When :meth:`due` next has something to do (None: only new entries can change that)."""
        if self._stop_pending:
            return now_s
        candidates = []
        if self._paused:
            return self._marks[0][0] if self._marks else None
        if self._marks:
            candidates.append(self._marks[0][0])
        if self._queue:
            slot = self._slot_for_next_frame(now_s, count_restart=False, peek=True)
            candidates.append(slot if isinstance(self._queue[0], OutMark) else slot - self._lead_s)
        elif self._tail:
            candidates.append(self._tail_release(now_s))
        return max(now_s, min(candidates)) if candidates else None

    # ------------------------------------------------------------------ internals

    def _pause(self, now_s: float) -> None:
        """Stop the platform now; what it had not played yet goes back to the queue's front."""
        self._paused = True
        back: list[tuple[float, int, bytes | OutMark]] = [
            (slot, 1, pcm) for slot, pcm in self._sent if slot + self._frame_s > now_s
        ]
        # A mark not reached yet goes back before the frame of its slot; one reached stays.
        back += [(at_s, 0, OutMark(name)) for at_s, name in self._marks if at_s > now_s]
        self._marks = deque((at_s, name) for at_s, name in self._marks if at_s <= now_s)
        self._sent.clear()
        if back or (self._next_slot is not None and self._next_slot > now_s):
            self._stop_pending = True  # the platform holds audio: drop it
        back.sort(key=lambda item: (item[0], item[1]))
        self._queue.extendleft(item for _, _, item in reversed(back))
        self._next_slot = None

    def _slot_for_next_frame(
        self, now_s: float, *, count_restart: bool, peek: bool = False
    ) -> float:
        """Slot of the next frame: the schedule's next slot, or now if the schedule fell behind."""
        slot = self._next_slot
        if slot is not None and slot >= now_s:
            return slot
        if not peek:
            if slot is not None and count_restart:
                self.restarts += 1
            self._next_slot = now_s
        return now_s

    def _tail_release(self, now_s: float) -> float:
        """When a held partial frame is padded and released: at its slot, and never before it
        has waited one frame for the rest of its audio."""
        slot = self._slot_for_next_frame(now_s, count_restart=False, peek=True)
        return max(slot, self._tail_since + self._frame_s)

    def _release_tail(self) -> None:
        if self._tail:
            self._queue.append(self._tail + bytes(self._frame_bytes - len(self._tail)))
            self._tail = b""
