"""Gap filling: ask the readers for what a sink misses, and name what can no longer be had.

GapFiller asks for a stream's missing ranges (through an `ask` callable, in practice
common.replay.ReplayClient.ask), one request per stream at a time, with a deadline and bounded
retries, and turns what can no longer be had into `Lost` records with a reason, so nothing is
waited for forever and every loss is named. A pure state machine over a GapTracker: no sockets,
and a clock that tests can drive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from powmon.common.schema.readings import Flag, Reading
from powmon.common.schema.replay import ReplayReply
from powmon.common.schema.status import STATE_STOPPED, ReaderEnd, Status
from powmon.sink.tracker import (
    KEEP,
    MAX_SENSORS,
    REASON_BOUND,
    REASON_DEVICE,
    REASON_NO_ENDPOINT,
    REASON_NO_REPLY,
    REASON_OVERRUN,
    REASON_RESTARTED,
    REASON_STOPPED,
    GapTracker,
    Key,
)


@dataclass(frozen=True, slots=True)
class Lost:
    """Readings first..last of a stream are gone for good, and why (a gaps.csv row).

    `unnumbered` samples were lost before they became readings (REASON_DEVICE: the device
    numbered them, the host never got them): they took no seq, so the range is the empty one
    just before seq `first` (`last` = first - 1) and `count` is theirs.
    """

    sensor_id: str
    session: str
    first: int
    last: int
    reason: str
    unnumbered: int = 0
    detected_ns: int = field(default_factory=time.time_ns)

    @property
    def count(self) -> int:
        return self.unnumbered or self.last - self.first + 1

    @property
    def key(self) -> tuple[str, str]:
        return (self.sensor_id, self.session)


@dataclass(slots=True)
class _Want:
    since: float  # when the stream started needing a replay (the no-endpoint grace runs from it)
    deadline: float = 0.0  # when the outstanding request times out; 0: none outstanding
    attempts: int = 0
    final_at: float = 0.0  # the reader has stopped: give up at this time; 0: it runs
    final_reason: str = REASON_STOPPED


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
    ) -> None:
        self.tracker = tracker if tracker is not None else GapTracker()
        self._ask = ask
        self._timeout = timeout
        self._retries = retries
        self._grace = grace
        self._clock = clock
        self._want: dict[Key, _Want] = {}
        # Unbounded on purpose: every loss must reach gaps.csv, and the owner drains it each
        # step (take_lost), so it holds at most one step's losses.
        self._lost: list[Lost] = []
        self.changed: set[Key] = set()  # streams whose holes changed; the owner may clear it
        self.lost = 0
        self.lost_by_sensor: dict[str, int] = {}  # bounded like the tracker's gaps_by_sensor
        self.lost_ranges = 0
        self.replayed = 0
        self.requests = 0

    @property
    def recovering(self) -> int:
        """Readings still missing in the streams being recovered."""
        count = self.tracker.missing_count
        return sum(count(key) for key in self._want)

    def due_in(self, now: float) -> float:
        """Seconds until a request times out, a stopped reader's stream is given up, or a
        stream still waiting for a reader's address reaches its grace (its heartbeat, which
        says where to ask, is a message and wakes the loop by itself); inf when none."""
        best = float("inf")
        for want in self._want.values():
            best = min(best, want.final_at or want.deadline or want.since + self._grace)
        return max(0.0, best - now)

    def opened(self, key: Key) -> None:
        if key not in self._want:
            self._want[key] = _Want(self._clock())
        self.changed.add(key)

    def heartbeat(self, status: Status) -> None:
        """A reader's heartbeat says how far its session got (`seq`: the next one to publish):
        readings it published that never arrived, even the last ones, are missing.

        Its last heartbeat (STATE_STOPPED) comes after every reading it published (one PUB,
        one path: order is kept) and after its replay socket served its last request: what
        is still missing of that session then is gone for good (`REASON_STOPPED`).
        """
        progress = status.reader
        if progress is None:
            return
        key = (status.ident, progress.session)
        if self.tracker.advance(status.ident, progress.session, progress.seq):
            self.opened(key)
        if status.state == STATE_STOPPED:
            self._final(key, REASON_STOPPED)

    def ended(self, end: ReaderEnd) -> None:
        """A supervisor says this reader's process ended (killed, crashed, or stopped): its
        session will never go on, and seqs below `end.seq` were taken. A stream this sink
        never heard of is learnt as the tracker learns any (what the store holds of it, else
        from 0): a session born and killed while this sink was down is named, not forgotten.
        The core passes such ends on only in its first moments after start, when it can still
        tell what it holds (SinkCore._may_look)."""
        key = (end.sensor_id, end.session)
        if self.tracker.advance(end.sensor_id, end.session, end.seq):
            self.opened(key)
        self._final(key, REASON_RESTARTED)

    def _final(self, key: Key, reason: str) -> None:
        """The stream's reader is gone: what it still misses is given up with `reason` after
        one request timeout (a reply sent just before may still be on its way, on another
        socket), and nothing more is asked of it."""
        want = self._want.get(key)
        if want is not None and not want.final_at:
            want.final_at = self._clock() + self._timeout
            want.final_reason = reason

    def on_reply(self, reply: ReplayReply) -> list[Reading]:
        """The replayed readings that fill holes, flagged REPLAYED; gives up what is gone."""
        sensor_id, session = key = (reply.sensor_id, reply.session)
        if not self.tracker.knows(sensor_id, session):
            return []
        observe = self.tracker.observe
        keep = [
            r._replace(flags=r.flags | Flag.REPLAYED)
            for r in reply.readings
            if observe(sensor_id, session, r.seq) in KEEP
        ]
        self.replayed += len(keep)
        if reply.dropped:
            kept = {r.seq for r in keep}
            for seq, count in reply.dropped:
                if seq in kept:  # the loss comes with its reading, once
                    self.report(device_dropped(sensor_id, session, seq, count))
        first, last = reply.available
        gone = 0
        for lo, hi in self.tracker.missing_of(key):
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
        for gap in self.tracker.take_evicted():
            self._record(gap.sensor_id, gap.session, gap.first, gap.last + 1, REASON_BOUND)
        if not self._want:
            return
        now = self._clock()
        for key, want in list(self._want.items()):
            missing = self.tracker.missing_of(key)
            if not missing:
                del self._want[key]
            elif want.final_at:
                if now >= want.final_at:
                    self._give_up_all(key, want.final_reason)
            elif not want.deadline or now >= want.deadline:
                self._step(key, want, missing, now)

    def finish(self) -> None:
        """The sink is stopping: what the stopped readers still owe will not come any more."""
        for key, want in list(self._want.items()):
            if want.final_at:
                self._give_up_all(key, want.final_reason)

    def _step(self, key: Key, want: _Want, missing: list[tuple[int, int]], now: float) -> None:
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
        for lo, hi in self.tracker.missing_of(key):
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
        self.report(Lost(sensor_id, session, lo, hi - 1, reason))

    def report(self, lost: Lost) -> None:
        """Count a loss and keep it for `take_lost()`: the one way every loss is accounted."""
        self._lost.append(lost)
        self.lost += lost.count
        by = self.lost_by_sensor
        if lost.sensor_id in by or len(by) < MAX_SENSORS:
            by[lost.sensor_id] = by.get(lost.sensor_id, 0) + lost.count
        self.lost_ranges += 1

    def take_lost(self) -> list[Lost]:
        out, self._lost = self._lost, []
        return out


def device_dropped(sensor_id: str, session: str, seq: int, count: int) -> Lost:
    """`count` samples the device took just before reading `seq` never reached the host."""
    return Lost(sensor_id, session, seq, seq - 1, REASON_DEVICE, count)
