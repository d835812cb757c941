"""Sequence accounting per (sensor_id, session): what arrived, what is missing, what is late.

Each reader session numbers its readings 0, 1, 2, ... without gaps, so a jump forward means
readings were lost on the way (a restart of the subscriber or the broker, ZeroMQ's slow joiner)
and a seq below the expected one is late or a duplicate. GapTracker keeps, per stream, the
ranges still missing (bounded), which is what tells a replayed reading that fills a hole from a
duplicate of one already stored. A pure state machine: no sockets, no clock of its own; the
sink core (sink/bookkeeping.py) feeds it and sink/filler.py asks readers for what it misses.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from powmon.common.schema.readings import Reading

MAX_STREAMS: Final = 4096
MAX_RANGES: Final = 64
WINDOW: Final = 1_000_000
RECENT_GAPS: Final = 32
MAX_SENSORS: Final = 256  # per-sensor counters kept for at most this many sensor ids

# Why a range was given up; these words go into gaps.csv and the logs.
REASON_RESTARTED: Final = "reader_restarted"  # the reader answers for a newer session only
REASON_OVERRUN: Final = "overrun"  # older than the oldest reading the reader still holds
REASON_NO_ENDPOINT: Final = "no_endpoint"  # no heartbeat told where to ask
REASON_NO_REPLY: Final = "no_reply"  # asked, retried, never answered
REASON_BOUND: Final = "memory_bound"  # too many holes (or too old) to keep track of
REASON_STOPPED: Final = "reader_stopped"  # the reader stopped (its last heartbeat) first
REASON_OVERFLOW: Final = "buffer_full"  # the sink could not hold it (a full disk for too long)
REASON_DEVICE: Final = "device_dropped"  # the device's samples that never reached the reader
REASON_SPOOL_FULL: Final = "spool_full"  # the uplink's spool cap dropped it before it was sent

Key = tuple[str, str]
Lookup = Callable[[str, str], "tuple[int, int] | None"]


@dataclass(frozen=True, slots=True)
class StreamState:
    """How far a sink got with one stream: the last seq stored, and the ranges [lo, hi) below
    it still missing; seqs below `floor` are outside what it knows. What a sink tells the core
    it holds at start (its files' tail, its spool's progress table), and what the core hands
    back with each batch for a sink that persists it."""

    sensor_id: str
    session: str
    last_seq: int
    floor: int
    missing: tuple[tuple[int, int], ...] = ()


class Verdict(enum.Enum):
    FIRST = "first"  # seq 0 of a stream never seen: nothing before it
    NEXT = "next"  # the expected seq
    GAP = "gap"  # a jump forward: the readings in between are missing
    FILL = "fill"  # late, and fills a missing range
    DUPLICATE = "duplicate"  # late, and already seen
    LATE = "late"  # late, and too old to know whether it was seen


KEEP: Final = frozenset({Verdict.FIRST, Verdict.NEXT, Verdict.GAP, Verdict.FILL})


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
    """Counts gaps, missing and late readings; knows which recent seqs were seen.

    `lookup(sensor, session)` (optional) is asked about a stream seen for the first time past
    seq 0, before it is taken to start at 0: it returns (last stored seq, floor) or None.
    Ranges dropped to keep memory bounded are kept for the owner to report (`take_evicted`).
    """

    def __init__(
        self, max_streams: int = MAX_STREAMS, max_ranges: int = MAX_RANGES,
        window: int = WINDOW, recent: int = RECENT_GAPS, lookup: Lookup | None = None,
    ) -> None:
        self._streams: dict[Key, _Stream] = {}
        self._max_streams = max_streams
        self._max_ranges = max_ranges
        self._window = window
        self._lookup = lookup
        self._recent: deque[GapRange] = deque(maxlen=recent)
        self._evicted: list[GapRange] = []
        self.gaps = 0
        self.gaps_by_sensor: dict[str, int] = {}  # every sensor seen, 0 until its first gap
        self.missing = 0
        self.late = 0
        self.filled = 0
        self.duplicates = 0

    @property
    def streams(self) -> int:
        return len(self._streams)

    def knows(self, sensor_id: str, session: str) -> bool:
        return (sensor_id, session) in self._streams

    @property
    def recent(self) -> tuple[GapRange, ...]:
        """The last few gaps opened, newest last."""
        return tuple(self._recent)

    def state(self, sensor_id: str, session: str) -> StreamState:
        """Where a known stream stands: last seq seen, floor, ranges still missing."""
        s = self._streams[(sensor_id, session)]
        missing = tuple((lo, hi) for lo, hi in s.missing)
        return StreamState(sensor_id, session, s.next_seq - 1, s.floor, missing)

    def missing_of(self, key: Key) -> list[tuple[int, int]]:
        """The [lo, hi) ranges of a stream still missing, oldest first (a copy)."""
        stream = self._streams.get(key)
        return [(lo, hi) for lo, hi in stream.missing] if stream is not None else []

    def missing_count(self, key: Key) -> int:
        stream = self._streams.get(key)
        return sum(hi - lo for lo, hi in stream.missing) if stream is not None else 0

    def take_evicted(self) -> list[GapRange]:
        """Ranges forgotten to keep memory bounded since the last call: the owner reports them."""
        out, self._evicted = self._evicted, []
        return out

    def resume(
        self, sensor_id: str, session: str, last_seq: int,
        missing: Iterable[tuple[int, int]] = (), floor: int | None = None,
    ) -> None:
        """Continue a stream whose state is known (from the data files or the spool)."""
        ranges = sorted([lo, hi] for lo, hi in missing if lo < hi)
        low = last_seq + 1 if floor is None else floor
        self._add((sensor_id, session), _Stream(last_seq + 1, low, ranges))

    def admit(self, readings: Sequence[Reading]) -> tuple[list[Reading], list[GapRange]]:
        """Sort a batch of live readings: those to store (first, next, gap, fill) and the gaps
        they opened. Duplicates and readings too late to tell are left out (and counted).

        The usual case, the next seq of a known stream, is decided inline: this runs once per
        reading in every sink.
        """
        streams = self._streams
        keep: list[Reading] = []
        opened: list[GapRange] = []
        for r in readings:
            stream = streams.get((r[0], r[1]))
            if stream is not None and stream.next_seq == r[2]:
                stream.next_seq += 1
                keep.append(r)
                continue
            verdict = self.observe(r[0], r[1], r[2])
            if verdict is Verdict.GAP:
                opened.append(self._recent[-1])
            elif verdict not in KEEP:
                continue
            keep.append(r)
        return keep, opened

    def observe(self, sensor_id: str, session: str, seq: int) -> Verdict:
        stream = self._streams.get((sensor_id, session))
        if stream is None:
            if seq == 0:
                self._add((sensor_id, session), _Stream(1, 0, []))
                return Verdict.FIRST
            stream = self._new(sensor_id, session)
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

    def advance(self, sensor_id: str, session: str, next_seq: int) -> bool:
        """A reader says it has published up to next_seq - 1; True if that opened a gap."""
        stream = self._streams.get((sensor_id, session))
        if stream is None:
            stream = self._new(sensor_id, session) if next_seq > 0 else None
            if stream is None:
                self._add((sensor_id, session), _Stream(0, 0, []))
                return False
        if next_seq <= stream.next_seq:
            return False
        self._gap(sensor_id, session, stream, next_seq)
        stream.next_seq = next_seq
        return True

    def give_up(self, key: Key, lo: int, hi: int) -> list[tuple[int, int]]:
        """Stop waiting for [lo, hi): return the parts of it that were still missing."""
        stream = self._streams.get(key)
        if stream is None:
            return []
        gone: list[tuple[int, int]] = []
        kept: list[list[int]] = []
        for a, b in stream.missing:
            if b <= lo or a >= hi:
                kept.append([a, b])
                continue
            gone.append((max(a, lo), min(b, hi)))
            kept += [p for p in ([a, lo], [hi, b]) if p[0] < p[1]]
        stream.missing = kept
        return gone

    def _new(self, sensor_id: str, session: str) -> _Stream:
        """A stream first seen past seq 0: resumed if `lookup` knows it, else from 0."""
        found = self._lookup(sensor_id, session) if self._lookup is not None else None
        if found is not None:
            self.resume(sensor_id, session, found[0], floor=found[1])
        else:
            self._add((sensor_id, session), _Stream(0, 0, []))
        return self._streams[(sensor_id, session)]

    def _add(self, key: Key, stream: _Stream) -> None:
        if key[0] not in self.gaps_by_sensor and len(self.gaps_by_sensor) < MAX_SENSORS:
            self.gaps_by_sensor[key[0]] = 0  # seen: its count is a number from now on
        self._streams.pop(key, None)
        self._streams[key] = stream
        if len(self._streams) > self._max_streams:
            victim = self._victim(key)
            for lo, hi in self._streams.pop(victim).missing:
                self._evicted.append(GapRange(victim[0], victim[1], lo, hi - 1))

    def _victim(self, added: Key) -> Key:
        """The stream to forget when the table is full: a finished one (no holes) whose
        sensor has a newer session, since a sensor's live session is its newest; else any
        finished one; only if none, the oldest. Forgetting a live stream would make its next
        reading look like a gap from 0 and ask for readings already stored."""
        newest = {k[0]: k for k in self._streams}  # insertion order: the last key per sensor
        finished: Key | None = None
        for k, stream in self._streams.items():
            if k == added or stream.missing:
                continue
            if newest[k[0]] != k:
                return k
            if finished is None:
                finished = k
        if finished is not None:
            return finished
        return next(k for k in self._streams if k != added)

    def _gap(self, sensor_id: str, session: str, stream: _Stream, seq: int) -> None:
        gap = GapRange(sensor_id, session, stream.next_seq, seq - 1)
        self.gaps += 1
        if sensor_id in self.gaps_by_sensor:
            self.gaps_by_sensor[sensor_id] += 1
        self.missing += gap.count
        self._recent.append(gap)
        stream.missing.append([stream.next_seq, seq])
        stream.next_seq = seq + 1
        floor = max(stream.floor, stream.next_seq - self._window)
        if len(stream.missing) > self._max_ranges:
            floor = max(floor, stream.missing[0][1])
        stream.floor = floor
        for lo, hi in stream.missing:
            if lo < floor:
                self._evicted.append(GapRange(sensor_id, session, lo, min(hi, floor) - 1))
        stream.missing = [[max(lo, floor), hi] for lo, hi in stream.missing if hi > floor]

    @staticmethod
    def _fill(stream: _Stream, seq: int) -> bool:
        for i, (lo, hi) in enumerate(stream.missing):
            if lo <= seq < hi:
                pieces = [[lo, seq], [seq + 1, hi]]
                stream.missing[i : i + 1] = [p for p in pieces if p[0] < p[1]]
                return True
        return False


