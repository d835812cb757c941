"""A pair of readings integrated (trapezoid), and split where it crosses a period boundary.

`powmon report` (per UTC hour or day, within --since/--until) and the writer's per-minute
rollups both give a period exactly the energy of the part of each pair that lies in it: a pair
from 11:59:59.9 to 12:00:00.1 gives half its energy to each hour. One splitter, so the two
agree with each other and with energy.json (whose total is the sum of the same pairs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

NS: Final = 1e9


def trapezoid_wh(t0_ns: int, w0: float, t1_ns: int, w1: float) -> tuple[float, float]:
    """(consumed, returned) watt-hours of a straight line from (t0, w0) to (t1, w1).

    A line crossing zero is split where it crosses, so each part is exact.
    """
    hours = (t1_ns - t0_ns) / NS / 3600.0
    if w0 >= 0 and w1 >= 0:
        return (w0 + w1) / 2 * hours, 0.0
    if w0 <= 0 and w1 <= 0:
        return 0.0, -(w0 + w1) / 2 * hours
    share = w0 / (w0 - w1)  # fraction of the line before it crosses zero
    first, second = w0 / 2 * hours * share, w1 / 2 * hours * (1 - share)
    return (first, -second) if w0 > 0 else (second, -first)


# a part of a pair: its start (ns), consumed Wh, returned Wh, covered seconds
Part = tuple[int, float, float, float]


def power_at(t0: int, w0: float, t1: int, w1: float, t: int) -> float:
    """The power at time t on the straight line between two readings."""
    return w0 if t1 == t0 else w0 + (w1 - w0) * (t - t0) / (t1 - t0)


def split_pair(
    t0: int, w0: float, t1: int, w1: float, length: int,
    lo: int | None = None, hi: int | None = None,
) -> Iterator[Part]:
    """The parts of the pair (t0, w0)-(t1, w1) inside [lo, hi) (None: unbounded), cut at every
    multiple of `length` ns (0: not cut); a part lies in the period of its start."""
    start = t0 if lo is None else max(t0, lo)
    end = t1 if hi is None else min(t1, hi)
    while start < end:
        stop = end if not length else min(end, (start // length + 1) * length)
        a, b = power_at(t0, w0, t1, w1, start), power_at(t0, w0, t1, w1, stop)
        consumed, returned = trapezoid_wh(start, a, stop, b)
        yield start, consumed, returned, (stop - start) / NS
        start = stop
