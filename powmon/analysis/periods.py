"""Per (sensor, period) figures for `powmon report`: energy, power, readings, coverage.

Energy comes from base.energy's integrated pairs, split where a pair crosses a period
boundary (or the --since/--until window), with the power interpolated there
(base.segments.split_pair, which the writer's per-minute rollups use too), so an hour gets
exactly the energy of its own minutes. Reading statistics (min, max, over-range) count the
rows whose timestamp falls in the period. Periods are UTC hours or days, or the whole window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from powmon.base.segments import NS, split_pair, trapezoid_wh
from powmon.base.text import format_ts

MAX_EMPTY_PERIODS: Final = 100_000
PERIOD_NS: Final = {"hour": 3600 * 1_000_000_000, "day": 86400 * 1_000_000_000}


@dataclass(slots=True)
class Acc:
    """What one sensor did in one period."""

    energy_wh: float = 0.0
    returned_wh: float = 0.0
    covered_s: float = 0.0
    readings: int = 0
    sum_w: float = 0.0
    min_w: float = math.inf
    max_w: float = -math.inf
    over_range: int = 0

    def merge(self, other: Acc) -> None:
        self.energy_wh += other.energy_wh
        self.returned_wh += other.returned_wh
        self.covered_s += other.covered_s
        self.readings += other.readings
        self.sum_w += other.sum_w
        self.min_w = min(self.min_w, other.min_w)
        self.max_w = max(self.max_w, other.max_w)
        self.over_range += other.over_range

    def figures(self, length_s: float) -> dict[str, Any]:
        """The report's fields; mean power is time-weighted over the covered time."""
        if self.covered_s > 0:
            mean: float | None = (self.energy_wh - self.returned_wh) * 3600 / self.covered_s
        else:
            mean = self.sum_w / self.readings if self.readings else None
        coverage = min(1.0, self.covered_s / length_s) if length_s > 0 else 0.0
        return {
            "energy_wh": round(self.energy_wh, 6),
            "returned_wh": round(self.returned_wh, 6),
            "mean_w": None if mean is None else round(mean, 3),
            "min_w": None if not self.readings else self.min_w,
            "max_w": None if not self.readings else self.max_w,
            "readings": self.readings,
            "coverage": round(coverage, 6),
            "covered_s": round(self.covered_s, 3),
            "missing_s": round(max(0.0, length_s - self.covered_s), 3),
            "over_range": self.over_range,
        }


class Periods:
    """Accumulators per (sensor, period index) inside a [since, until) window.

    `by` is 'hour', 'day' or None (one period: the whole window). An open end of the window
    is the data's own first or last reading (of the sensors reported), known at the end.
    """

    def __init__(self, by: str | None, since: int | None, until: int | None) -> None:
        self.length = PERIOD_NS[by] if by else 0
        self.since, self.until = since, until
        self.lo = self.hi = 0  # the data's span, within the window
        self.accs: dict[tuple[str, int], Acc] = {}
        self._last_key: tuple[str, int] | None = None
        self._last_acc = Acc()

    def index(self, ts_ns: int) -> int:
        return ts_ns // self.length if self.length else 0

    def inside(self, ts_ns: int) -> bool:
        return (self.since is None or ts_ns >= self.since) and (
            self.until is None or ts_ns < self.until
        )

    def acc(self, sensor_id: str, ts_ns: int) -> Acc:
        key = (sensor_id, ts_ns // self.length if self.length else 0)
        if key == self._last_key:  # rows come in time order mostly: the same period again
            return self._last_acc
        acc = self.accs.get(key)
        if acc is None:
            acc = self.accs[key] = Acc()
        self._last_key, self._last_acc = key, acc
        return acc

    def reading(self, sensor_id: str, ts_ns: int, watts: float, flags: str) -> None:
        """One row (already known to be inside the window)."""
        if ts_ns < self.lo or not self.accs:
            self.lo = ts_ns
        self.hi = max(self.hi, ts_ns)
        acc = self.acc(sensor_id, ts_ns)
        acc.readings += 1
        acc.sum_w += watts
        acc.min_w = min(acc.min_w, watts)
        acc.max_w = max(acc.max_w, watts)
        if flags and "over_range" in flags:
            acc.over_range += 1

    def segment(self, sensor_id: str, t0: int, w0: float, t1: int, w1: float) -> None:
        """An integrated pair: clipped to the window, split at period boundaries."""
        lo = t0 if self.since is None else max(t0, self.since)
        hi = t1 if self.until is None else min(t1, self.until)
        length = self.length
        if lo == t0 and hi == t1 and (not length or t0 // length == (t1 - 1) // length):
            consumed, returned = trapezoid_wh(t0, w0, t1, w1)  # the usual case: no split
            acc = self.acc(sensor_id, t0)
            acc.energy_wh += consumed
            acc.returned_wh += returned
            acc.covered_s += (t1 - t0) / NS
            return
        for start, consumed, returned, part_s in split_pair(t0, w0, t1, w1, length, lo, hi):
            acc = self.acc(sensor_id, start)
            acc.energy_wh += consumed
            acc.returned_wh += returned
            acc.covered_s += part_s

    def window(self) -> tuple[int, int]:
        """The report's [start, end]: --since/--until, else the data's span."""
        return (
            self.lo if self.since is None else self.since,
            self.hi if self.until is None else self.until,
        )

    def span_of(self, index: int) -> tuple[int, int]:
        """A period's [start, end], clipped to the window."""
        start, end = self.window()
        if not self.length:
            return start, end
        return max(start, index * self.length), min(end, (index + 1) * self.length)

    def result(self) -> dict[str, Any]:
        """The JSON document: window, and per sensor its totals and its periods."""
        start, end = self.window()
        sensors: dict[str, Any] = {}
        for sensor_id in sorted({s for s, _ in self.accs}):
            total = Acc()
            periods = []
            for index in self._indices(sensor_id, start, end):
                acc = self.accs.get((sensor_id, index), Acc())
                total.merge(acc)
                p_start, p_end = self.span_of(index)
                periods.append(
                    {
                        "start": format_ts(p_start),
                        "end": format_ts(p_end),
                        **acc.figures((p_end - p_start) / NS),
                    }
                )
            sensors[sensor_id] = {**total.figures((end - start) / NS), "periods": periods}
        return {"since": format_ts(start), "until": format_ts(end), "sensors": sensors}

    def _indices(self, sensor_id: str, start: int, end: int) -> list[int]:
        """Every period of the window, those without data too (coverage 0), unless that
        would be absurdly many (a --since decades back): then those with data."""
        with_data = sorted(i for s, i in self.accs if s == sensor_id)
        if not self.length:
            return with_data
        first = self.index(start)
        last = self.index(end if self.until is None else max(start, end - 1))
        if last - first > MAX_EMPTY_PERIODS:
            return with_data
        return list(range(first, last + 1))

