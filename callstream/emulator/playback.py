"""What the call platform plays into the call (pure): a model of ACS's playback buffer.

Audio received from the server is queued; every 20 ms slot of the call's clock plays the next
frame of the queue, or silence when it is empty. ``StopAudio`` drops the queue. The timeline of
what played — the recording — starts at the call's start. Times are seconds on any monotonic
clock, passed in.
"""

from __future__ import annotations

from collections import deque


class Playback:
    def __init__(self, frame_bytes: int, start_s: float, *, frame_s: float = 0.020) -> None:
        self._frame_bytes = frame_bytes
        self._frame_s = frame_s
        self._start_s = start_s
        self._queue: deque[bytes] = deque()
        self._partial = b""
        self._slots_played = 0
        self._timeline = bytearray()
        self._silence = bytes(frame_bytes)
        self._was_playing = False
        self._dry_slots = 0
        self.underruns = 0  # times playback went dry and audio resumed later
        self.underrun_slots = 0
        self.stops = 0
        self.frames_received = 0

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    @property
    def recording(self) -> bytes:
        return bytes(self._timeline)

    def push(self, pcm: bytes, now_s: float) -> None:
        """Audio arrived at ``now_s`` (any length; regrouped into 20 ms frames)."""
        self.advance(now_s)
        data = self._partial + pcm
        whole = len(data) - len(data) % self._frame_bytes
        for i in range(0, whole, self._frame_bytes):
            self._queue.append(data[i : i + self._frame_bytes])
            self.frames_received += 1
        self._partial = data[whole:]

    def stop(self, now_s: float) -> None:
        """StopAudio arrived: drop everything queued."""
        self.advance(now_s)
        self._queue.clear()
        self._partial = b""
        self.stops += 1

    def advance(self, now_s: float) -> None:
        """Play every slot that has begun by ``now_s`` (slot j begins at start + j * 20 ms).

        Audio pushed during a slot therefore plays from the next slot on.
        """
        if now_s < self._start_s:
            return
        due = int((now_s - self._start_s) / self._frame_s) + 1
        while self._slots_played < due:
            self._play_slot()

    def _play_slot(self) -> None:
        self._slots_played += 1
        if self._queue:
            if self._was_playing and self._dry_slots:
                self.underruns += 1
                self.underrun_slots += self._dry_slots
            self._dry_slots = 0
            self._was_playing = True
            self._timeline += self._queue.popleft()
        else:
            if self._was_playing:
                self._dry_slots += 1
            self._timeline += self._silence
