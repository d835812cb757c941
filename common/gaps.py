"""Sequence accounting and gap filling per (sensor_id, session), shared by writer and uplink.

Each reader session numbers its readings 0, 1, 2, ... without gaps, so a jump forward means
readings were lost on the way (a restart of the subscriber or the broker, ZeroMQ's slow joiner)
and a seq below the expected one is late or a duplicate. GapTracker keeps, per stream, the
ranges still missing (bounded), which is what tells a replayed reading that fills a hole from a
duplicate of one already stored. GapFiller asks the readers for those ranges (through an `ask`
callable, in practice common.replay.ReplayClient.ask) with a deadline and bounded retries, and
turns what can no longer be had into `Lost` records with a reason, so nothing is waited for
forever and every loss is named. Both are pure state machines: no sockets, no clock of their own.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Final

from powmon.common.schema import Flag, Reading, ReplayReply, Status

MAX_STREAMS: Final = 4096
MAX_RANGES: Final = 64
WINDOW: Final = 1_000_000
RECENT_GAPS: Final = 32
MAX_LOST_KEPT: Final = 1024

# Why a range was given up; these words go into gaps.csv and the logs.
REASON_RESTARTED: Final = "reader_restarted"  # the reader answers for a newer session only
REASON_OVERRUN: Final = "overrun"  # older than the oldest reading the reader still holds
REASON_NO_ENDPOINT: Final = "no_endpoint"  # no heartbeat told where to ask
REASON_NO_REPLY: Final = "no_reply"  # asked, retried, never answered
REASON_BOUND: Final = "memory_bound"  # too many holes (or too old) to keep track of

Key = tuple[str, str]
Lookup = Callable[[str, str], "tuple[int, int] | None"]


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
    Ranges dropped to keep memory bounded are appended to `evicted` for the owner to report.
    """

    def __init__(
        self, max_streams: int = MAX_STREAMS, max_ranges: int = MAX_RANGES,
        window: int = WINDOW, recent: int = RECENT_GAPS, lookup: Lookup | None = None,
    ) -> None:  # fmt: skip
        self._streams: dict[Key, _Stream] = {}
        self._max_streams = max_streams
        self._max_ranges = max_ranges
        self._window = window
        self.lookup = lookup
        self.recent: deque[GapRange] = deque(maxlen=recent)
        self.evicted: list[GapRange] = []
        self.gaps = 0
        self.missing = 0
        self.late = 0
        self.filled = 0
        self.duplicates = 0

    @property
    def streams(self) -> int:
        return len(self._streams)

    def knows(self, sensor_id: str, session: str) -> bool:
        return (sensor_id, session) in self._streams

    def state(self, sensor_id: str, session: str) -> tuple[int, int, list[tuple[int, int]]]:
        """(next seq, floor, missing [lo, hi) ranges) of a known stream."""
        s = self._streams[(sensor_id, session)]
        return s.next_seq, s.floor, [(lo, hi) for lo, hi in s.missing]

    def missing_of(self, key: Key) -> list[list[int]]:
        stream = self._streams.get(key)
        return stream.missing if stream is not None else []

    def next_seqs(self) -> dict[Key, _Stream]:
        """The live per-stream state, for a caller's inline fast path of observe(): when
        `streams[key].next_seq == seq` the verdict is NEXT, and the caller sets next_seq to
        seq + 1 itself. Anything else must go through observe()."""
        return self._streams

    def resume(
        self, sensor_id: str, session: str, last_seq: int,
        missing: Iterable[tuple[int, int]] = (), floor: int | None = None,
    ) -> None:  # fmt: skip
        """Continue a stream whose state is known (from the data files or the spool)."""
        ranges = sorted([lo, hi] for lo, hi in missing if lo < hi)
        low = last_seq + 1 if floor is None else floor
        self._add((sensor_id, session), _Stream(last_seq + 1, low, ranges))

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

    def seen(self, sensor_id: str, session: str, seq: int) -> bool | None:
        """Whether this reading was already observed; None when outside the known window."""
        stream = self._streams.get((sensor_id, session))
        if stream is None or seq < stream.floor:
            return None
        if seq >= stream.next_seq:
            return False
        return not any(lo <= seq < hi for lo, hi in stream.missing)

    def _new(self, sensor_id: str, session: str) -> _Stream:
        """A stream first seen past seq 0: resumed if `lookup` knows it, else from 0."""
        found = self.lookup(sensor_id, session) if self.lookup is not None else None
        if found is not None:
            self.resume(sensor_id, session, found[0], floor=found[1])
        else:
            self._add((sensor_id, session), _Stream(0, 0, []))
        return self._streams[(sensor_id, session)]

    def _add(self, key: Key, stream: _Stream) -> None:
        self._streams.pop(key, None)
        self._streams[key] = stream
        if len(self._streams) > self._max_streams:
            # Forget a finished stream (no holes) first; only if none, the oldest one.
            others = [(k, s) for k, s in self._streams.items() if k != key]
            victim = next((k for k, s in others if not s.missing), others[0][0])
            for lo, hi in self._streams.pop(victim).missing:
                self.evicted.append(GapRange(victim[0], victim[1], lo, hi - 1))

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
        for lo, hi in stream.missing:
            if lo < floor:
                self.evicted.append(GapRange(sensor_id, session, lo, min(hi, floor) - 1))
        stream.missing = [[max(lo, floor), hi] for lo, hi in stream.missing if hi > floor]

    @staticmethod
    def _fill(stream: _Stream, seq: int) -> bool:
        for i, (lo, hi) in enumerate(stream.missing):
            if lo <= seq < hi:
                pieces = [[lo, seq], [seq + 1, hi]]
                stream.missing[i : i + 1] = [p for p in pieces if p[0] < p[1]]
                return True
        return False


@dataclass(frozen=True, slots=True)
class Lost:
    """Readings first..last of a stream are gone for good, and why (a gaps.csv row)."""

    sensor_id: str
    session: str
    first: int
    last: int
    reason: str
    detected_ns: int = field(default_factory=time.time_ns)

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(slots=True)
class _Want:
    since: float  # when the stream started needing a replay (the no-endpoint grace runs from it)
    deadline: float = 0.0  # when the outstanding request times out; 0: none outstanding
    attempts: int = 0


Asker = Callable[[str, str, int, int], bool]


class GapFiller:
    """Asks for missing ranges, one request per stream at a time, and gives up with a reason.

    The owner feeds it: `opened(key)` after a GAP verdict or `heartbeat()`, `on_reply()` with
    each ReplayReply (it returns the readings to store), and `tick()` from its loop. What is
    given up is kept for `take_lost()` and counted in `lost` / `lost_ranges`.
    """

    def __init__(
        self, ask: Asker, tracker: GapTracker | None = None, *, timeout: float = 2.0,
        retries: int = 3, grace: float = 5.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.tracker = tracker if tracker is not None else GapTracker()
        self._ask = ask
        self._timeout = timeout
        self._retries = retries
        self._grace = grace
        self._clock = clock
        self._want: dict[Key, _Want] = {}
        self._lost: deque[Lost] = deque(maxlen=MAX_LOST_KEPT)
        self.changed: set[Key] = set()  # streams whose holes changed; the owner may clear it
        self.lost = 0
        self.lost_ranges = 0
        self.replayed = 0
        self.requests = 0

    @property
    def recovering(self) -> int:
        """Readings still missing in the streams being recovered."""
        missing_of = self.tracker.missing_of
        return sum(hi - lo for key in self._want for lo, hi in missing_of(key))

    def opened(self, key: Key) -> None:
        if key not in self._want:
            self._want[key] = _Want(self._clock())
        self.changed.add(key)

    def heartbeat(self, status: Status) -> None:
        """A reader's heartbeat says how far its session got (`seq`: the next one to publish):
        readings it published that never arrived, even the last ones, are missing."""
        session = status.counters.get("session")
        seq = status.counters.get("seq")
        if status.process != "reader" or not isinstance(session, str) or type(seq) is not int:
            return
        if session and self.tracker.advance(status.ident, session, seq):
            self.opened((status.ident, session))

    def on_reply(self, reply: ReplayReply) -> list[Reading]:
        """The replayed readings that fill holes, flagged REPLAYED; gives up what is gone."""
        sensor_id, session = key = (reply.sensor_id, reply.session)
        if not self.tracker.knows(sensor_id, session):
            return []
        observe = self.tracker.observe
        keep = [
            replace(r, flags=r.flags | Flag.REPLAYED)
            for r in reply.readings
            if observe(sensor_id, session, r.seq) in KEEP
        ]
        self.replayed += len(keep)
        first, last = reply.available
        gone = 0
        for lo, hi in list(self.tracker.missing_of(key)):
            if last < first:
                gone += self._give_up(key, lo, hi, REASON_RESTARTED)
            elif lo < first:
                gone += self._give_up(key, lo, min(hi, first), REASON_OVERRUN)
        want = self._want.get(key)
        if want is not None and (keep or gone):
            want.deadline, want.attempts = 0.0, 0
        self.changed.add(key)
        return keep

    def tick(self) -> None:
        """Send due requests, time out unanswered ones, report evicted ranges."""
        for gap in self.tracker.evicted:
            self._record(gap.sensor_id, gap.session, gap.first, gap.last + 1, REASON_BOUND)
        self.tracker.evicted.clear()
        if not self._want:
            return
        now = self._clock()
        for key, want in list(self._want.items()):
            missing = self.tracker.missing_of(key)
            if not missing:
                del self._want[key]
            elif not want.deadline or now >= want.deadline:
                self._step(key, want, missing, now)

    def _step(self, key: Key, want: _Want, missing: list[list[int]], now: float) -> None:
        if want.deadline and want.attempts >= self._retries:
            self._give_up_all(key, REASON_NO_REPLY)
            return
        want.deadline = 0.0
        lo, hi = missing[0]
        if self._ask(key[0], key[1], lo, hi - 1):
            self.requests += 1
            want.attempts += 1
            want.deadline = now + self._timeout
        elif now - want.since >= self._grace:
            self._give_up_all(key, REASON_NO_ENDPOINT)

    def _give_up_all(self, key: Key, reason: str) -> None:
        for lo, hi in list(self.tracker.missing_of(key)):
            self._give_up(key, lo, hi, reason)
        self._want.pop(key, None)

    def _give_up(self, key: Key, lo: int, hi: int, reason: str) -> int:
        count = 0
        for a, b in self.tracker.give_up(key, lo, hi):
            self._record(key[0], key[1], a, b, reason)
            count += b - a
        self.changed.add(key)
        return count

    def _record(self, sensor_id: str, session: str, lo: int, hi: int, reason: str) -> None:
        self._lost.append(Lost(sensor_id, session, lo, hi - 1, reason))
        self.lost += hi - lo
        self.lost_ranges += 1

    def take_lost(self) -> list[Lost]:
        out = list(self._lost)
        self._lost.clear()
        return out
