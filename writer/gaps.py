"""Sequence accounting per (sensor_id, session): gaps, late readings, and what was already seen.

Each reader session numbers its readings 0, 1, 2, ... without gaps, so a jump forward means
readings were lost on the way (a full queue, a writer restart) and a seq below the expected one
is late or a duplicate. The tracker keeps, per stream, the ranges still missing (bounded), so
it can tell a late reading that fills a gap from a duplicate of one already stored: that is what
a later gap-filling replay from the readers needs to dedupe, and why `seen()` exists now.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final

MAX_STREAMS: Final = 4096
MAX_RANGES: Final = 64
WINDOW: Final = 1_000_000
RECENT_GAPS: Final = 32


class Verdict(enum.Enum):
    FIRST = "first"  # first reading of a stream since start: nothing to compare with
    NEXT = "next"  # the expected seq
    GAP = "gap"  # a jump forward: the readings in between are missing
    FILL = "fill"  # late, and fills a missing range
    DUPLICATE = "duplicate"  # late, and already seen
    LATE = "late"  # late, and too old to know whether it was seen


@dataclass(frozen=True, slots=True)
class GapRange:
    """Readings `first`..`last` (inclusive) of a stream did not arrive when expected."""

    sensor_id: str
    session: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(slots=True)
class _Stream:
    next_seq: int
    floor: int  # seqs below this are outside the window: unknown whether seen
    missing: list[list[int]]  # [lo, hi) ranges not seen yet, oldest first


class GapTracker:
    """Counts gaps, missing and late readings; knows which recent seqs were seen."""

    def __init__(
        self,
        max_streams: int = MAX_STREAMS,
        max_ranges: int = MAX_RANGES,
        window: int = WINDOW,
        recent: int = RECENT_GAPS,
    ) -> None:
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._max_streams = max_streams
        self._max_ranges = max_ranges
        self._window = window
        self.recent: deque[GapRange] = deque(maxlen=recent)
        self.gaps = 0
        self.missing = 0
        self.late = 0
        self.filled = 0
        self.duplicates = 0

    @property
    def streams(self) -> int:
        return len(self._streams)

    def resume(self, sensor_id: str, session: str, last_seq: int) -> None:
        """Continue a stream whose last stored seq is known (from the data files)."""
        self._add((sensor_id, session), _Stream(last_seq + 1, last_seq + 1, []))

    def observe(self, sensor_id: str, session: str, seq: int) -> Verdict:
        stream = self._streams.get((sensor_id, session))
        if stream is None:
            self._add((sensor_id, session), _Stream(seq + 1, seq, []))
            return Verdict.FIRST
        expected = stream.next_seq
        if seq == expected:
            stream.next_seq = seq + 1
            return Verdict.NEXT
        if seq > expected:
            self._gap(sensor_id, session, stream, seq)
            return Verdict.GAP
        self.late += 1
        if self._fill(stream, seq):
            self.filled += 1
            return Verdict.FILL
        if seq >= stream.floor:
            self.duplicates += 1
            return Verdict.DUPLICATE
        return Verdict.LATE

    def seen(self, sensor_id: str, session: str, seq: int) -> bool | None:
        """Whether this reading was already observed; None when outside the known window."""
        stream = self._streams.get((sensor_id, session))
        if stream is None or seq < stream.floor:
            return None
        if seq >= stream.next_seq:
            return False
        return not any(lo <= seq < hi for lo, hi in stream.missing)

    def _add(self, key: tuple[str, str], stream: _Stream) -> None:
        self._streams.pop(key, None)
        self._streams[key] = stream
        if len(self._streams) > self._max_streams:
            del self._streams[next(iter(self._streams))]  # the oldest stream goes first

    def _gap(self, sensor_id: str, session: str, stream: _Stream, seq: int) -> None:
        gap = GapRange(sensor_id, session, stream.next_seq, seq - 1)
        self.gaps += 1
        self.missing += gap.count
        self.recent.append(gap)
        stream.missing.append([stream.next_seq, seq])
        stream.next_seq = seq + 1
        floor = max(stream.floor, stream.next_seq - self._window)
        if len(stream.missing) > self._max_ranges:
            floor = max(floor, stream.missing[0][1])
        stream.floor = floor
        stream.missing = [[max(lo, floor), hi] for lo, hi in stream.missing if hi > floor]

    @staticmethod
    def _fill(stream: _Stream, seq: int) -> bool:
        for i, (lo, hi) in enumerate(stream.missing):
            if lo <= seq < hi:
                pieces = [[lo, seq], [seq + 1, hi]]
                stream.missing[i : i + 1] = [p for p in pieces if p[0] < p[1]]
                return True
        return False
