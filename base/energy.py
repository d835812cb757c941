"""Energy per sensor: power integrated over time between consecutive readings, holes accounted.

Pure state, no clock and no I/O, so that `powmon report` (offline, from CSV), the tap (live,
from the bus) and the writer (live, persisted across restarts) all count the same way.

Readings come one at a time, possibly out of order: replayed readings arrive late to fill
holes, in CSV files too, where they sit after the rows that followed them. Per stream
(sensor_id, session) the meter keeps *runs*: ranges of seqs already accounted for, each with
only its first and last present reading. Two present readings become neighbours when the seqs
between them are all accounted for (arrived, or given up for good); the pair is then
integrated (trapezoid) if they are at most the sensor's bridge limit apart, and otherwise
counts as missing coverage. So memory is bounded by the number of open holes, and a hole
filled later gives exactly the energy it would have given in order: the total for a set of
readings does not depend on the order they arrived in.

Energy that only grows (what a Home Assistant energy sensor needs) is the integral of the
positive part of the power; the negative part (current flowing the other way) is counted
apart as `returned_wh`, so nothing is lost silently.

This module is long because EnergyMeter is one state machine (runs, holes, give-ups, retired
sessions, its saved state) whose invariants hold across all of its methods; split, each part
would have to know the others' rules.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import statistics
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, field
from typing import Any, Final

from powmon.base.energy_state import load_sensors
from powmon.base.segments import NS, split_pair, trapezoid_wh

BRIDGE_PERIODS: Final = 5  # a pair further apart than this many polling periods is a hole ...
BRIDGE_FLOOR_S: Final = 0.5  # ... and never less than this (POLLING_DELAY 0, fast links)
LEARN_INTERVALS: Final = 16  # intervals observed before the typical one is taken as known
LEARN_MAX: Final = 256  # readings held back at most while learning
MAX_HOLES: Final = 1024  # open holes kept per stream; past that the oldest is given up
MAX_STREAMS: Final = 16  # sessions kept per sensor; older ones are closed and forgotten
RETIRED_KEPT: Final = 256  # forgotten sessions remembered, so their stragglers are not recounted
STATE_VERSION: Final = 1

# sensor_id, t0_ns, w0, t1_ns, w1: one integrated pair, for per-period accounting
SegmentSink = Callable[[str, int, float, int, float], None]
# sensor_id, period start ns, consumed Wh, returned Wh, covered s: the parts of integrated pairs
# that lie in one period (base.segments.split_pair), told per run of readings, not per pair
PeriodSink = Callable[[str, int, float, float, float], None]
_NO_PERIOD: Final = (-(1 << 62), 1 << 62)  # bounds no reading's time reaches


def bridge_limit(period_s: float) -> float:
    """The longest time between two readings that is still bridged, for a polling period."""
    return max(BRIDGE_FLOOR_S, BRIDGE_PERIODS * period_s)


@dataclass(frozen=True, slots=True)
class SensorTotals:
    """What a sensor's energy looks like now; seconds are of wall-clock time.

    `missing_s` is time within the data's span that no bridged pair covers and no open hole
    may still cover (`pending_s`): gaps, restarts, unplugs, readings given up for good.
    """

    energy_wh: float
    returned_wh: float
    covered_s: float
    missing_s: float
    pending_s: float
    readings: int
    first_ns: int
    last_ns: int
    bridge_s: float | None  # None while the typical interval is still being learned

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Run:
    """Seqs lo..hi accounted for; hseq/tseq are its first and last present reading (-1: none)."""

    lo: int
    hi: int
    hseq: int = -1
    hts: int = 0
    hw: float = 0.0
    tseq: int = -1
    tts: int = 0
    tw: float = 0.0


_LO: Final = operator.attrgetter("lo")  # runs are sorted by lo: bisect on it in place


@dataclass(slots=True)
class _Sensor:
    bridge_s: float | None
    energy_wh: float = 0.0
    returned_wh: float = 0.0
    covered_s: float = 0.0
    readings: int = 0
    first_ns: int = 0
    last_ns: int = 0
    learning: list[tuple[str, int, int, float]] = field(default_factory=list)
    streams: dict[str, list[_Run]] = field(default_factory=dict)


class EnergyMeter:
    """Energy, coverage and reading counts per sensor, from readings in any order.

    `periods` maps sensor ids to their POLLING_DELAY; a sensor with 0 or none learns its
    typical interval from its first readings (held back meanwhile, at most LEARN_MAX).
    `on_segment` hears every pair that was integrated, for accounting by period (it turns off
    add_run's fast path); `split_by` tells a sink the same energy summed per fixed period,
    at the cost of one comparison per reading (the writer's per-minute rollups).
    """

    def __init__(
        self,
        periods: Mapping[str, float] | None = None,
        *,
        on_segment: SegmentSink | None = None,
        max_holes: int = MAX_HOLES,
    ) -> None:
        self._periods = dict(periods or {})
        self._sink = on_segment
        self._period_sink: PeriodSink | None = None
        self._period_ns = 0
        self._max_holes = max(1, max_holes)
        self._sensors: dict[str, _Sensor] = {}
        self._retired: deque[tuple[str, str]] = deque(maxlen=RETIRED_KEPT)
        self.ignored = 0  # duplicates, and stragglers of forgotten sessions

    def split_by(self, length_ns: int, sink: PeriodSink | None) -> None:
        """From now on tell `sink` the energy of every pair integrated, per period of
        `length_ns` (UTC-aligned: multiples of it since the epoch); None stops telling."""
        self._period_sink, self._period_ns = sink, length_ns if sink is not None else 0

    # -- feeding ---------------------------------------------------------------------------
    def add(self, sensor_id: str, session: str, seq: int, ts_ns: int, watts: float) -> None:
        """Take one reading; a duplicate of one already counted is ignored (and counted)."""
        sensor = self._sensors.get(sensor_id) or self._sensor(sensor_id)
        if sensor.bridge_s is None:
            self._learn(sensor_id, sensor, (session, seq, ts_ns, watts))
            return
        runs = sensor.streams.get(session)
        if runs is None:
            runs = self._new_stream(sensor_id, sensor, session)
            if runs is None:
                self.ignored += 1
                return
        last = runs[-1] if runs else None
        if last is not None and seq == last.hi + 1:  # the usual case: the next reading
            if last.tseq >= 0:
                self._pair(sensor_id, sensor, last.tts, last.tw, ts_ns, watts)
            else:
                last.hseq, last.hts, last.hw = seq, ts_ns, watts
            last.hi = last.tseq = seq
            last.tts, last.tw = ts_ns, watts
        elif not self._insert(
            sensor_id, sensor, runs, _Run(seq, seq, seq, ts_ns, watts, seq, ts_ns, watts)
        ):
            self.ignored += 1
            return
        if not sensor.readings:
            sensor.first_ns = sensor.last_ns = ts_ns
        sensor.readings += 1
        sensor.first_ns = min(sensor.first_ns, ts_ns)
        sensor.last_ns = max(sensor.last_ns, ts_ns)

    def add_run(self, sensor_id: str, session: str, run: Sequence[Sequence[Any]]) -> None:
        """Consecutive readings of one stream, as add() would take each of them, in one pass
        when they continue it (the writer's batches: energy is per batch work, not a method
        call and two attribute writes per reading). Each item indexes as a Reading does
        (seq at 2, ts_ns at 3, watts at 7)."""
        sensor = self._sensors.get(sensor_id)
        last = self._continued(sensor, session, run[0][2])
        if sensor is None or last is None or sensor.bridge_s is None:
            for r in run:
                self.add(sensor_id, session, r[2], r[3], r[7])
            return
        bridge = sensor.bridge_s
        t0, w0 = last.tts, last.tw
        energy = covered = 0.0
        lo, hi = sensor.first_ns, sensor.last_ns
        tell, length = self._period_sink or _told_nothing, self._period_ns
        p_lo, p_hi = (t0 - t0 % length, t0 - t0 % length + length) if length else _NO_PERIOD
        mark_e, mark_r, mark_c = 0.0, sensor.returned_wh, 0.0  # totals when the period began
        for r in run:
            t1, w1 = r[3], r[7]
            dt = (t1 - t0) / NS
            if not p_lo <= t1 <= p_hi:  # the pair leaves the period (only with a period sink)
                _tell_share(tell, sensor_id, p_lo, energy - mark_e,
                            sensor.returned_wh - mark_r, covered - mark_c)
                if 0 <= dt <= bridge:
                    consumed, returned, part_s = self._tell_parts(sensor_id, t0, w0, t1, w1)
                    energy += consumed
                    sensor.returned_wh += returned
                    covered += part_s
                mark_e, mark_r, mark_c = energy, sensor.returned_wh, covered
                p_lo = t1 - t1 % length
                p_hi = p_lo + length
            elif 0 <= dt <= bridge:
                if w0 >= 0 and w1 >= 0:
                    energy += (w0 + w1) * dt / 7200
                else:
                    consumed, returned = trapezoid_wh(t0, w0, t1, w1)
                    energy += consumed
                    sensor.returned_wh += returned
                covered += dt
            lo, hi = min(lo, t1), max(hi, t1)
            t0, w0 = t1, w1
        _tell_share(tell, sensor_id, p_lo, energy - mark_e, sensor.returned_wh - mark_r,
                    covered - mark_c)
        sensor.energy_wh += energy
        sensor.covered_s += covered
        sensor.readings += len(run)
        sensor.first_ns, sensor.last_ns = lo, hi
        last.hi = last.tseq = run[-1][2]
        last.tts, last.tw = t0, w0

    def _continued(self, sensor: _Sensor | None, session: str, seq: int) -> _Run | None:
        """The run that a run of readings from `seq` continues where add_run may count them in
        its one pass (known bridge, a present last reading, no per-pair listener); else None."""
        runs = sensor.streams.get(session) if sensor is not None else None
        last = runs[-1] if runs else None
        if (sensor is None or last is None or sensor.bridge_s is None or self._sink is not None
                or last.tseq < 0 or seq != last.hi + 1):
            return None
        return last

    def give_up(self, sensor_id: str, session: str, first: int, last: int) -> None:
        """Seqs first..last of a stream will never come (gaps.csv): their neighbours may meet."""
        sensor = self._sensor(sensor_id)
        if sensor.bridge_s is None:  # give-ups come seconds after a gap: learning is over by then
            self._decide(sensor_id, sensor)
        runs = sensor.streams.get(session) or self._new_stream(sensor_id, sensor, session)
        if runs is None:
            return
        lo = first
        while lo <= last:
            i = bisect.bisect_right(runs, lo, key=_LO) - 1
            if i >= 0 and runs[i].hi >= lo:  # lo already accounted for: skip past that run
                lo = runs[i].hi + 1
                continue
            nxt = runs[i + 1].lo if i + 1 < len(runs) else last + 1
            hi = min(last, nxt - 1)
            self._insert(sensor_id, sensor, runs, _Run(lo, hi))
            lo = hi + 1

    def close(self, sensor_id: str | None = None) -> None:
        """Give up every open hole (end of the data): pairs across them may still be bridged."""
        for sid, sensor in self._sensors.items():
            if sensor_id is not None and sid != sensor_id:
                continue
            if sensor.bridge_s is None:
                self._decide(sid, sensor)
            for runs in sensor.streams.values():
                while len(runs) > 1:
                    self._merge(sid, sensor, runs, 0)

    def fold(self, open_streams: Collection[tuple[str, str]] = ()) -> int:
        """Forget the ended sessions of every sensor: all but its current one (the session of
        its newest reading) and those in `open_streams` (holes a sink is still filling).

        The totals keep what they counted, so nothing a report of the same rows would count
        changes; what goes is the per-session bookkeeping, which otherwise grows with every
        reader restart (in memory and in a saved state) until MAX_STREAMS. Returns how many
        sessions were folded.
        """
        folded = 0
        for sid, sensor in self._sensors.items():
            if len(sensor.streams) < 2:
                continue
            current = max(sensor.streams, key=lambda k: _newest_ns(sensor.streams[k]))
            for session in [k for k in sensor.streams if k != current]:
                if (sid, session) not in open_streams:
                    self._retire(sid, sensor, session)
                    folded += 1
        return folded

    # -- reading out -----------------------------------------------------------------------
    def sensors(self) -> list[str]:
        return sorted(self._sensors)

    def totals(self, sensor_id: str) -> SensorTotals:
        s = self._sensors[sensor_id]
        pending = 0.0
        for runs in s.streams.values():
            for a, b in itertools.pairwise(runs):
                if a.tseq >= 0 and b.hseq >= 0 and b.hts > a.tts:
                    pending += (b.hts - a.tts) / NS
        span = (s.last_ns - s.first_ns) / NS
        missing = max(0.0, span - s.covered_s - pending)
        return SensorTotals(
            s.energy_wh,
            s.returned_wh,
            s.covered_s,
            missing,
            pending,
            s.readings,
            s.first_ns,
            s.last_ns,
            s.bridge_s,
        )

    def snapshot(self) -> dict[str, SensorTotals]:
        return {sid: self.totals(sid) for sid in self.sensors()}

    # -- internals -------------------------------------------------------------------------
    def _sensor(self, sensor_id: str) -> _Sensor:
        sensor = self._sensors.get(sensor_id)
        if sensor is None:
            period = self._periods.get(sensor_id, 0.0)
            sensor = self._sensors[sensor_id] = _Sensor(bridge_limit(period) if period else None)
        return sensor

    def _new_stream(self, sensor_id: str, sensor: _Sensor, session: str) -> list[_Run] | None:
        if (sensor_id, session) in self._retired:
            return None
        if len(sensor.streams) >= MAX_STREAMS:  # forget the session that ended longest ago
            oldest = min(sensor.streams, key=lambda k: sensor.streams[k][-1].tts)
            self._retire(sensor_id, sensor, oldest)
        runs = sensor.streams[session] = []
        return runs

    def _retire(self, sensor_id: str, sensor: _Sensor, session: str) -> None:
        """Close a session's holes (as close() would) and keep only its name, so that its rows
        met again (a restart's tail) are not counted twice: its energy stays in the totals."""
        runs = sensor.streams.pop(session)
        while len(runs) > 1:
            self._merge(sensor_id, sensor, runs, 0)
        self._retired.append((sensor_id, session))

    def _insert(self, sensor_id: str, sensor: _Sensor, runs: list[_Run], run: _Run) -> bool:
        """Put a run into the sorted list, merging with neighbours it touches; False for a
        reading whose seq is already accounted for."""
        i = bisect.bisect_right(runs, run.lo, key=_LO)
        if i > 0 and runs[i - 1].hi >= run.lo:
            return False
        runs.insert(i, run)
        if i + 1 < len(runs) and runs[i + 1].lo == run.hi + 1:
            self._merge(sensor_id, sensor, runs, i)
        if i > 0 and runs[i - 1].hi + 1 == runs[i].lo:
            self._merge(sensor_id, sensor, runs, i - 1)
        if len(runs) > self._max_holes + 1:
            self._merge(sensor_id, sensor, runs, 0)
        return True

    def _merge(self, sensor_id: str, sensor: _Sensor, runs: list[_Run], i: int) -> None:
        """Join runs i and i+1, closing whatever hole lay between them."""
        a, b = runs[i], runs.pop(i + 1)
        if a.tseq >= 0 and b.hseq >= 0:
            self._pair(sensor_id, sensor, a.tts, a.tw, b.hts, b.hw)
        if a.hseq < 0:
            a.hseq, a.hts, a.hw = b.hseq, b.hts, b.hw
        if b.tseq >= 0:
            a.tseq, a.tts, a.tw = b.tseq, b.tts, b.tw
        a.hi = b.hi

    def _pair(self, sensor_id: str, s: _Sensor, t0: int, w0: float, t1: int, w1: float) -> None:
        dt = (t1 - t0) / NS
        if dt < 0 or s.bridge_s is None or dt > s.bridge_s:
            return  # a hole (or a clock that went back): missing coverage, not energy
        if w0 >= 0 and w1 >= 0:  # the usual case, inlined: this runs once per reading
            s.energy_wh += (w0 + w1) * dt / 7200
        else:
            consumed, returned = trapezoid_wh(t0, w0, t1, w1)
            s.energy_wh += consumed
            s.returned_wh += returned
        s.covered_s += dt
        if self._sink is not None:
            self._sink(sensor_id, t0, w0, t1, w1)
        if self._period_sink is not None:
            self._tell_parts(sensor_id, t0, w0, t1, w1)

    def _tell_parts(self, sensor_id: str, t0: int, w0: float, t1: int, w1: float
                    ) -> tuple[float, float, float]:
        """Tell the period sink a pair's parts; their consumed, returned and covered sums."""
        tell, length = self._period_sink, self._period_ns
        assert tell is not None  # noqa: S101 -- called only with a period sink
        sums = [0.0, 0.0, 0.0]
        for start, consumed, returned, part_s in split_pair(t0, w0, t1, w1, length):
            tell(sensor_id, start - start % length, consumed, returned, part_s)
            sums[0] += consumed
            sums[1] += returned
            sums[2] += part_s
        return sums[0], sums[1], sums[2]

    def _learn(self, sensor_id: str, s: _Sensor, reading: tuple[str, int, int, float]) -> None:
        s.learning.append(reading)
        if len(s.learning) >= LEARN_MAX or len(_intervals(s.learning)) >= LEARN_INTERVALS:
            self._decide(sensor_id, s)

    def _decide(self, sensor_id: str, s: _Sensor) -> None:
        """Fix the bridge limit from the typical interval seen so far; replay what was held."""
        s.bridge_s = learned_limit(s.learning)
        held, s.learning = s.learning, []
        for session, seq, ts_ns, watts in held:
            self.add(sensor_id, session, seq, ts_ns, watts)

    # -- persistence -----------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """A JSON-able dict from which from_state() continues exactly where this meter is."""
        return {
            "version": STATE_VERSION,
            "sensors": {
                sid: {
                    "energy_wh": s.energy_wh,
                    "returned_wh": s.returned_wh,
                    "covered_s": s.covered_s,
                    "readings": s.readings,
                    "first_ns": s.first_ns,
                    "last_ns": s.last_ns,
                    "bridge_s": s.bridge_s,
                    "learning": [list(r) for r in s.learning],
                    "streams": {
                        k: [list(astuple(r)) for r in runs] for k, runs in s.streams.items()
                    },
                }
                for sid, s in self._sensors.items()
            },
            "retired": [list(k) for k in self._retired],
            "ignored": self.ignored,
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        periods: Mapping[str, float] | None = None,
        *,
        on_segment: SegmentSink | None = None,
        max_holes: int = MAX_HOLES,
    ) -> EnergyMeter:
        """Rebuild a meter from to_state(); ValueError names what is wrong with a bad state."""
        meter = cls(periods, on_segment=on_segment, max_holes=max_holes)
        sensors, retired, ignored = load_sensors(state, STATE_VERSION)
        for sid, fields in sensors.items():
            streams = {k: [_Run(*r) for r in runs] for k, runs in fields["streams"].items()}
            meter._sensors[sid] = _Sensor(**{**fields, "streams": streams})
        meter._retired.extend(retired)
        meter.ignored = ignored
        return meter


def _told_nothing(sensor_id: str, start: int, consumed: float, returned: float,
                  covered_s: float) -> None:
    """The period sink of a meter without one."""


def _tell_share(tell: PeriodSink, sensor_id: str, start: int, consumed: float,
                returned: float, covered_s: float) -> None:
    """A period's share of a run's pairs, if there is any."""
    if consumed or returned or covered_s:
        tell(sensor_id, start, consumed, returned, covered_s)


def _newest_ns(runs: list[_Run]) -> int:
    """The time of a stream's newest present reading (runs with none count as the oldest)."""
    return max((r.tts for r in runs if r.tseq >= 0), default=-1)


def learned_limit(readings: list[tuple[str, int, int, float]]) -> float:
    """The bridge limit from the typical (median) interval of (session, seq, ts_ns, watts)
    readings in any order; the floor when they hold no two consecutive seqs."""
    intervals = _intervals(readings)
    return bridge_limit(statistics.median(intervals) if intervals else 0.0)


def _intervals(readings: list[tuple[str, int, int, float]]) -> list[float]:
    """Seconds between readings with consecutive seqs of one session (in any arrival order)."""
    ordered = sorted(readings)
    return [
        (b[2] - a[2]) / NS
        for a, b in itertools.pairwise(ordered)
        if a[0] == b[0] and b[1] == a[1] + 1 and b[2] > a[2]
    ]
