"""Device time to UTC: offset and drift of a board's clock, estimated while it streams.

Pure: the caller gives pairs (device time of the newest sample in a serial read, host UTC
when that read returned) and asks for UTC times of device times. The link only ever delays
(USB polling, a host busy elsewhere), never advances, so each pair is an upper bound of the
true mapping and the best estimate is the line just under all of them: the lower convex hull
of recent pairs, taken at its support under the window's centre (the line below all points
that minimises the sum of their delays). Pairs are thinned to the one with the least delay
per one-second bucket, kept for a minute: the drift adapts slowly, the offset follows any
pair that falls below the line at once. The error is then about the smallest delay seen, not
the typical one. After a new start (a device reset, a jump) a rate already known from 10 s of
pairs is kept, and only the offset is fitted until there are 10 s of new pairs.

Output is strictly increasing: a correction never sends a timestamp back (it holds the
timestamps HOLD_NS apart until the estimate catches up: 1 us, the resolution of the CSV
timestamps, so that stored rows stay distinct and in order too). A jump of the host clock
(or a device reset the decoder could not see) shows as pairs far off the line: far below at
once, far above for two seconds, and the estimate starts again from the new pairs.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

NOMINAL: Final = 1000.0  # ns of UTC per device us for a perfect crystal
BUCKET_US: Final = 1_000_000  # one pair kept per second of device time ...
WINDOW_BUCKETS: Final = 64  # ... for about a minute (a refit per second costs ~0.2 ms)
STEP_NS: Final = 50_000_000  # pairs this far off the line mean a jump, not a delay
STEP_BUCKETS: Final = 2  # buckets all above the line by STEP_NS before it counts as a jump
MAX_DRIFT: Final = 0.02  # a fitted rate further than 2% from nominal is not believed
RATE_SPAN_US: Final = 10_000_000  # a rate fitted over this long is kept through a new start
HOLD_NS: Final = 1_000  # least step between two timestamps: the CSV's microsecond


@dataclass(slots=True)
class ClockCounters:
    observations: int = 0
    fits: int = 0
    resets: int = 0  # device time went back (device reset), or reset() was called
    steps: int = 0  # jumps of the offset: host clock stepped, or an unseen device reset


class DeviceClock:
    """Map one device's micros (unwrapped) to UTC ns; see the module docstring.

    `delay_ns` is the part of the delay that is known and constant (the frame's time on the
    wire, the time a sample takes to convert): it is taken off every host time, so that the
    estimate is not late by it.
    """

    def __init__(self, delay_ns: int = 0) -> None:
        self.delay_ns = delay_ns
        self.counters = ClockCounters()
        self.rate = NOMINAL  # UTC ns per device us; kept across a device reset (same crystal)
        self._rate_known = False  # fitted over RATE_SPAN_US at least
        self._base_us = 0
        self._base_ns = 0
        self._anchored = False
        self._last_out = -1  # never returned again, nor anything below it
        self._last_us = -1
        self._buckets: deque[tuple[int, int]] = deque(maxlen=WINDOW_BUCKETS)
        self._open = -1  # index of the bucket being filled
        self._open_pair = (0, 0)
        self._above = 0  # consecutive closed buckets far above the line

    @property
    def drift_ppm(self) -> float:
        """How fast the device clock runs against UTC, in parts per million (+: fast)."""
        return (NOMINAL / self.rate - 1.0) * 1e6

    def reset(self) -> None:
        """The device restarted its clock: forget the offset, keep the rate and monotony."""
        self.counters.resets += 1
        self._anchored = False
        self._buckets.clear()
        self._open = -1
        self._above = 0
        self._last_us = -1

    def observe(self, device_us: int, host_ns: int) -> None:
        """Device time `device_us` had happened by host UTC `host_ns` (a read returned)."""
        c = self.counters
        c.observations += 1
        if device_us < self._last_us:
            self.reset()
        self._last_us = device_us
        host_ns -= self.delay_ns
        if not self._anchored:
            self._anchor(device_us, host_ns)
            return
        residual = host_ns - self._predict(device_us)
        if residual < -STEP_NS:
            c.steps += 1
            self._buckets.clear()
            self._open = -1
            self._anchor(device_us, host_ns)
            return
        if residual < 0:  # less delay than any pair so far: the line moves down to it
            self._base_ns += residual
        self._add(device_us, host_ns)

    def to_utc_ns(self, device_us: int) -> int:
        """UTC ns of device time `device_us`: the estimate, kept strictly increasing."""
        utc = self._base_ns + int((device_us - self._base_us) * self.rate)
        utc = max(utc, self._last_out + HOLD_NS)
        self._last_out = utc
        return utc

    def stamp(self, device_us: Sequence[int], host_ns: int) -> list[int]:
        """One serial read: observe its newest sample at `host_ns`, return every sample's UTC.

        Samples before a device reset in the same read are mapped with the estimate they
        belong to, before the reset is taken in.
        """
        if not device_us:
            return []
        if not all(map(operator.le, device_us, device_us[1:])):
            cut = next(i for i in range(1, len(device_us)) if device_us[i] < device_us[i - 1])
            before = [self.to_utc_ns(d) for d in device_us[:cut]]
            self.reset()
            return before + self.stamp(device_us[cut:], host_ns)
        self.observe(device_us[-1], host_ns)
        to_utc = self.to_utc_ns
        return [to_utc(d) for d in device_us]

    # -- estimation ------------------------------------------------------------------------
    def _predict(self, device_us: int) -> int:
        return self._base_ns + int((device_us - self._base_us) * self.rate)

    def _anchor(self, device_us: int, host_ns: int) -> None:
        self._base_us, self._base_ns = device_us, host_ns
        self._anchored = True
        self._above = 0
        self._add(device_us, host_ns)

    def _add(self, device_us: int, host_ns: int) -> None:
        """Keep the pair with the least delay per bucket; refit when a bucket closes."""
        bucket = device_us // BUCKET_US
        if bucket == self._open:
            d, h = self._open_pair
            if host_ns - self._predict(device_us) < h - self._predict(d):
                self._open_pair = (device_us, host_ns)
            return
        if self._open >= 0:
            self._close(*self._open_pair)
        self._open = bucket
        self._open_pair = (device_us, host_ns)

    def _close(self, device_us: int, host_ns: int) -> None:
        if host_ns - self._predict(device_us) > STEP_NS:
            self._above += 1
            if self._above >= STEP_BUCKETS:  # the host clock jumped ahead: start again
                self.counters.steps += 1
                self._buckets.clear()
                self._above = 0
                self._base_us, self._base_ns = device_us, host_ns
            else:
                return  # perhaps a burst of delay: not a pair to fit to (yet)
        else:
            self._above = 0
        self._buckets.append((device_us, host_ns))
        self._fit()

    def _fit(self) -> None:
        """The line under the lower hull of the buckets, supporting it at their mean time."""
        points = list(self._buckets)
        d0, h0 = points[0]
        span = points[-1][0] - d0
        if self._rate_known and span < RATE_SPAN_US:
            self._fit_offset(points)
            return
        if len(points) < 2:
            return
        self.counters.fits += 1
        xs = [float(d - d0) for d, _ in points]
        ys = [float(h - h0) - NOMINAL * float(d - d0) for d, h in points]
        hull = _lower_hull(xs, ys)
        centre = sum(xs) / len(xs)
        k = next((k for k in range(1, len(hull)) if xs[hull[k]] >= centre), len(hull) - 1)
        a, b = hull[k - 1], hull[k]
        slope = (ys[b] - ys[a]) / (xs[b] - xs[a])
        if abs(slope) > NOMINAL * MAX_DRIFT:
            return  # not a crystal: keep what we have
        self.rate = NOMINAL + slope
        self._rate_known = self._rate_known or span >= RATE_SPAN_US
        # The line through hull point a, placed at the newest pair so the numbers stay small.
        newest = xs[-1]
        self._base_us = d0 + int(newest)
        self._base_ns = h0 + int(ys[a] + NOMINAL * xs[a] + self.rate * (newest - xs[a]))

    def _fit_offset(self, points: list[tuple[int, int]]) -> None:
        """Keep the rate; put the line through the pair with the least delay."""
        self.counters.fits += 1
        d0, h0 = points[0]
        rate = self.rate
        self._base_us, self._base_ns = min(
            points, key=lambda p: float(p[1] - h0) - rate * float(p[0] - d0)
        )


def _lower_hull(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the lower convex hull of points sorted by x (Andrew's monotone chain)."""
    hull: list[int] = []
    for i in range(len(xs)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (xs[b] - xs[a]) * (ys[i] - ys[a]) - (ys[b] - ys[a]) * (xs[i] - xs[a])
            if cross > 0:
                break
            hull.pop()
        hull.append(i)
    return hull
