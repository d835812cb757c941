"""A minute of one sensor being rolled up, and the rollups recomputed from stored rows.

The writer's live rollups (writer/rollups.py) and a recomputation from the raw rows (the
writer's resume after a kill, and the tests that check the rollups) add the same things the
same way: reading statistics from the readings whose timestamp falls in the minute, energy
from base.energy's integrated pairs split at the minute's boundaries (EnergyMeter.split_by).
Every field adds up, so a minute can also be a *delta* (the change a late reading made to a
minute already written and no longer in memory), merged with the stored row when written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from powmon.base.energy import EnergyMeter
from powmon.base.rollups import MINUTE_NS, Rollup
from powmon.base.storage import StoredRow

MinuteKey = tuple[str, int]  # sensor_id, the minute's start in ns


@dataclass(slots=True)
class Minute:
    """What one sensor did in one minute; `partial`: only a change to a row already stored."""

    readings: int = 0
    sum_w: float = 0.0
    min_w: float = math.inf
    max_w: float = -math.inf
    sum_a: float = 0.0
    over_range: int = 0
    energy_wh: float = 0.0
    returned_wh: float = 0.0
    covered_s: float = 0.0
    partial: bool = False

    def energy(self, consumed: float, returned: float, covered_s: float) -> None:
        self.energy_wh += consumed
        self.returned_wh += returned
        self.covered_s += covered_s

    def reading(self, watts: float, amps: float, over_range: bool) -> None:
        self.readings += 1
        self.sum_w += watts
        self.min_w = min(self.min_w, watts)
        self.max_w = max(self.max_w, watts)
        self.sum_a += amps
        self.over_range += over_range

    def merge(self, row: Rollup) -> None:
        """Add a stored row (means times readings give its sums back, within rounding)."""
        if row.readings:
            self.readings += row.readings
            self.sum_w += (row.mean_w or 0.0) * row.readings
            self.sum_a += (row.mean_a or 0.0) * row.readings
            self.min_w = min(self.min_w, row.min_w if row.min_w is not None else math.inf)
            self.max_w = max(self.max_w, row.max_w if row.max_w is not None else -math.inf)
        self.over_range += row.over_range
        self.energy(row.energy_wh, row.returned_wh, row.covered_s)

    def row(self, sensor_id: str, minute_ns: int) -> Rollup:
        n = self.readings
        return Rollup(
            minute_ns, sensor_id, n, self.sum_w / n if n else None, self.min_w if n else None,
            self.max_w if n else None, self.sum_a / n if n else None, self.energy_wh,
            self.returned_wh, min(self.covered_s, 60.0), self.over_range,
        )


def recompute(rows: Iterable[StoredRow], periods: Mapping[str, float],
              since_ns: int = 0) -> dict[MinuteKey, Minute]:
    """The minutes of stored rows (in any order), as the writer rolls them up; only minutes
    starting at or after `since_ns` are kept (those before it may lack rows)."""
    minutes: dict[MinuteKey, Minute] = {}

    def minute(sensor_id: str, start: int) -> Minute:
        key = (sensor_id, start - start % MINUTE_NS)
        found = minutes.get(key)
        if found is None:
            found = minutes[key] = Minute()
        return found

    meter = EnergyMeter(periods)
    meter.split_by(MINUTE_NS, lambda s, start, c, r, cov: minute(s, start).energy(c, r, cov))
    for row in rows:
        minute(row.sensor_id, row.ts_ns).reading(row.watts, row.amps, "over_range" in row.flags)
        meter.add(row.sensor_id, row.session, row.seq, row.ts_ns, row.watts)
    return {k: m for k, m in minutes.items() if k[1] >= since_ns}
