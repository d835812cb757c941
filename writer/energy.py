"""The writer's energy totals: what every sensor consumed, counted from what was stored.

The meter is base.energy's (the one `powmon report` and the tap use), fed with every row the
writer stores, live or replayed, and told of every range named lost. Its state is saved beside
the data (`<LOCAL_DATA_ROOT>/energy.json`, written to a temporary file and renamed, so a crash
leaves the old or the new one, never half of one) after each flush, so the totals survive a
restart and only ever grow: what a Home Assistant energy sensor needs. The writer publishes
them in its heartbeat (`energy_wh`, {sensor_id: Wh}).

A writer killed between a flush and the save would resume from a state that lags its files; at
start it therefore also feeds the meter the rows of its files' tail (the meter ignores those it
already counted), so no stored reading is left out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from math import isfinite
from pathlib import Path
from typing import Final

from powmon.base.energy import EnergyMeter, PeriodSink
from powmon.base.rollups import MINUTE_NS
from powmon.base.storage import SENSOR, SEQ, SESSION, TS, WATTS
from powmon.base.text import parse_ts
from powmon.common.schema.readings import Reading
from powmon.sink.api import Lost

log = logging.getLogger(__name__)

ENERGY_FILE: Final = "energy.json"


def stream_runs(readings: Sequence[Reading]) -> list[Sequence[Reading]]:
    """A batch as runs of consecutive readings of one stream (how they come off the bus: a
    reader's message is one), found once for the energy and the rollups."""
    if not readings:
        return []
    runs = []
    start, prev = 0, readings[0]
    for i in range(1, len(readings)):  # inlined: it runs for every reading stored
        r = readings[i]
        if r[2] != prev[2] + 1 or r[1] != prev[1] or r[0] != prev[0]:
            runs.append(readings[start:i])
            start = i
        prev = r
    runs.append(readings[start:])
    return runs


class EnergyBook:
    """The meter, its file, and what the heartbeat shows of it."""

    def __init__(self, root: Path, periods: Mapping[str, float],
                 on_minute: PeriodSink | None = None) -> None:
        self.path = root / ENERGY_FILE
        self._periods = dict(periods)
        self._on_minute = on_minute  # the rollups: told each pair's energy per minute
        self.meter = EnergyMeter(self._periods)
        self.meter.split_by(MINUTE_NS, on_minute)
        self.save_errors = 0

    def load(self, tail: Iterable[Sequence[str]]) -> None:
        """The saved totals, then the stored rows they may lag behind (CSV rows of the tail);
        the rollups are not told of those (they recompute the tail's minutes themselves)."""
        self.meter.split_by(MINUTE_NS, None)
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
            self.meter = EnergyMeter.from_state(state, self._periods)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            log.error("cannot use %s (%s): energy totals start again from zero", self.path, err)
        for row in tail:
            try:
                ts_ns, watts = parse_ts(row[TS]), float(row[WATTS])
            except ValueError:
                continue
            if isfinite(watts):
                self.meter.add(row[SENSOR], row[SESSION], int(row[SEQ]), ts_ns, watts)
        self.meter.split_by(MINUTE_NS, self._on_minute)

    def add(self, runs: Iterable[Sequence[Reading]]) -> None:
        """A batch as its runs (stream_runs), each counted in one pass (EnergyMeter.add_run)."""
        add_run = self.meter.add_run
        for run in runs:
            add_run(run[0][0], run[0][1], run)

    def lost(self, lost: Iterable[Lost]) -> None:
        for gap in lost:
            self.meter.give_up(gap.sensor_id, gap.session, gap.first, gap.last)

    def fold(self, open_streams: Collection[tuple[str, str]]) -> None:
        """Keep only the current session of each sensor and those with holes still open
        (EnergyMeter.fold): energy.json stays the size of what is live, not of the history."""
        self.meter.fold(open_streams)

    def save(self) -> None:
        """Write the state next to the data; a failure is logged and tried at the next flush."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.meter.to_state()), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as err:
            self.save_errors += 1
            if self.save_errors == 1:
                log.error("cannot save energy totals to %s: %s", self.path, err)
            with contextlib.suppress(OSError):
                tmp.unlink()
        else:
            self.save_errors = 0

    def counters(self) -> dict[str, object]:
        totals = self.meter.snapshot()
        return {"energy_wh": {s: round(t.energy_wh, 6) for s, t in totals.items()}}

