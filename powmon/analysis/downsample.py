"""Millions of rows to a few points per pixel column, so that a plot keeps every peak.

Two streaming passes over the data files. The first finds the time span and each sensor's
typical interval (hence its bridge limit, as base.energy uses it). The second keeps, per
sensor and pixel column, the first, lowest, highest and last reading (M4 downsampling): drawn
in time order, those four points make the same pixels as all the readings of the column, so a
one-reading spike survives any zoom. Where two neighbouring readings are further apart than
the bridge limit (a gap, a restart, an unplug), a NaN breaks the line: gaps show as gaps.
Column statistics do not depend on row order, so replayed rows later in a file land where
they belong. No plotting library here: tests check the data, and `powmon --help` needs none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from powmon.analysis.datafiles import BadRows, rows
from powmon.base.energy import LEARN_MAX, learned_limit
from powmon.base.text import flag_names
from powmon.common.schema.readings import Flag

POINTS_PER_COLUMN: Final = 4
AC_FLAG: Final = flag_names(Flag.AC_RMS)  # "ac_rms": RMS current, so power is apparent


@dataclass(slots=True)
class Column:
    """One pixel column of one quantity: (ts_ns, value) of its first, min, max, last reading."""

    first: tuple[int, float]
    last: tuple[int, float]
    low: tuple[int, float]
    high: tuple[int, float]

    def add(self, ts: int, value: float) -> None:
        if ts < self.first[0]:
            self.first = (ts, value)
        if ts >= self.last[0]:
            self.last = (ts, value)
        if value < self.low[1]:
            self.low = (ts, value)
        if value > self.high[1]:
            self.high = (ts, value)

    def points(self) -> list[tuple[int, float]]:
        return sorted((self.first, self.low, self.high, self.last))


@dataclass(slots=True)
class Series:
    """What is drawn for one sensor: times (ns) and values, NaN where the line breaks.

    Power and current are downsampled apart (each keeps its own extremes), so each has its
    own times.
    """

    ts: list[float] = field(default_factory=list)
    watts: list[float] = field(default_factory=list)
    amps_ts: list[float] = field(default_factory=list)
    amps: list[float] = field(default_factory=list)
    readings: int = 0
    breaks: int = 0


@dataclass(frozen=True, slots=True)
class Span:
    """What the first pass found: the time span and each sensor's bridge limit."""

    start: int
    end: int
    bridge_s: dict[str, float]
    ac: frozenset[str] = frozenset()  # sensors whose rows are flagged ac_rms (power is VA)


def scan(
    files: list[Path], sensors: Iterable[str], since: int | None, until: int | None, bad: BadRows
) -> Span | None:
    """First pass: span of the selected rows and bridge limit per sensor; None if no rows."""
    wanted = frozenset(sensors)
    start, end = math.inf, -math.inf
    learning: dict[str, list[tuple[str, int, int, float]]] = {}
    ac: set[str] = set()
    for ts, sensor_id, session, seq, _a, watts, flags in rows(files, bad):
        if (wanted and sensor_id not in wanted) or not _inside(ts, since, until):
            continue
        start, end = min(start, ts), max(end, ts)
        if flags and AC_FLAG in flags:
            ac.add(sensor_id)
        held = learning.setdefault(sensor_id, [])
        if len(held) < LEARN_MAX:
            held.append((session, seq, ts, watts))
    if not learning:
        return None
    limits = {s: learned_limit(held) for s, held in learning.items()}
    return Span(int(start), int(end), limits, frozenset(ac))


def _inside(ts: int, since: int | None, until: int | None) -> bool:
    return (since is None or ts >= since) and (until is None or ts < until)


def downsample(
    files: list[Path], span: Span, columns: int, since: int | None, until: int | None, bad: BadRows
) -> dict[str, Series]:
    """Second pass: per sensor, M4 points per pixel column, NaN at gaps (see module doc)."""
    width = max(1, span.end - span.start)
    watts_cols: dict[str, dict[int, Column]] = {s: {} for s in span.bridge_s}
    amps_cols: dict[str, dict[int, Column]] = {s: {} for s in span.bridge_s}
    counts = dict.fromkeys(span.bridge_s, 0)
    for ts, sensor_id, _s, _q, amps, watts, _f in rows(files, bad):
        cols = watts_cols.get(sensor_id)
        if cols is None or not _inside(ts, since, until):
            continue
        counts[sensor_id] += 1
        col = min(columns - 1, (ts - span.start) * columns // width)
        column = cols.get(col)
        if column is None:
            cols[col] = Column((ts, watts), (ts, watts), (ts, watts), (ts, watts))
            amps_cols[sensor_id][col] = Column((ts, amps), (ts, amps), (ts, amps), (ts, amps))
        else:
            column.add(ts, watts)
            amps_cols[sensor_id][col].add(ts, amps)
    return {
        s: _series(watts_cols[s], amps_cols[s], span.bridge_s[s], counts[s])
        for s in sorted(span.bridge_s)
    }


def _series(
    watts: dict[int, Column], amps: dict[int, Column], bridge_s: float, readings: int
) -> Series:
    out = Series(readings=readings)
    previous_end: int | None = None
    limit_ns = bridge_s * 1e9
    for col in sorted(watts):
        if previous_end is not None and watts[col].first[0] - previous_end > limit_ns:
            for values in (out.ts, out.watts, out.amps_ts, out.amps):
                values.append(math.nan)
            out.breaks += 1
        for ts, value in watts[col].points():
            out.ts.append(float(ts))
            out.watts.append(value)
        for ts, value in amps[col].points():
            out.amps_ts.append(float(ts))
            out.amps.append(value)
        previous_end = watts[col].last[0]
    return out
