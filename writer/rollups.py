"""The writer's per-minute rollups (base/rollups.py is their format), kept from what it stores.

Derived only from stored readings: the writer hands every batch it stores to `add_runs` (the
reading statistics, per run of one stream: a few C-level passes over the run, no Python work
per reading) and its EnergyMeter tells `energy` the parts of every integrated pair per minute
(EnergyMeter.split_by: one comparison per reading), so a minute's energy is energy.json's,
split at the minute's boundaries. Replayed readings and give-ups (gaps.csv) change a minute
like live ones do.

When a minute is written: after the raw rows reached the disk (`flush`, called after the data
files' flush, so no rollup counts a row a kill could lose), once it is complete enough, i.e.
the writer has stored a reading of that sensor more than a minute after the minute's end (or
of any sensor four minutes after it: an unplugged sensor's last minute is not held back), and
again whenever a late reading or a give-up changes it; at stop (`close`) every minute. Minutes
stay in memory for KEEP_NS behind their sensor's newest reading; a change to an older one is a
delta, merged with its stored row when written.

After a kill -9 (`resume`, at start): the minutes from the first one a sensor's rollups lack
(at most RESUME_NS back) are recomputed from the raw tail, read back far enough to hold every
row of them and the pair reaching into the first, and those that differ from the stored rows
(missing, or stale) are written again. Exact: reading statistics of every recomputed minute;
energy of pairs whose two readings are in the tail. Approximate at the tail's edge: a hole
given up before the kill (gaps.csv) is open to the recomputation, so the pair across it is
not in its minute (energy.json has it); a late fill of a minute older than the recomputed ones
stored but not yet rolled up when the writer was killed (between the data files' write and
the rollups', a few milliseconds) is not in its minute; a sensor with POLLING_DELAY 0 learns its
bridge limit again from the tail. Rollups are not built for raw data older than RESUME_NS that
no rollup covers (an existing installation's history).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import operator
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from powmon.base.energy import bridge_limit
from powmon.base.rollups import (
    DAY_NS,
    MINUTE_NS,
    Rollup,
    compact,
    day_name,
    format_rollup,
    header_line,
    list_days,
    read_file,
    remove_temp_files,
    rollup_dir,
)
from powmon.base.storage import StoredRow, parse_row
from powmon.base.text import format_ts
from powmon.common.logs import RateLimiter
from powmon.common.schema.readings import Flag, Reading
from powmon.writer.minutes import Minute, MinuteKey, recompute

log = logging.getLogger(__name__)

QUIET_NS: Final = 5 * MINUTE_NS  # a minute is due this long after its start by any sensor
KEEP_NS: Final = 10 * MINUTE_NS  # minutes kept in memory behind their sensor's newest reading
RESUME_NS: Final = 15 * MINUTE_NS  # how far back a start recomputes minutes at most
RETENTION_EVERY_S: Final = 3600.0
# the raw tails read (bytes), each until one reaches back far enough: 15 minutes of 8 x 100 Hz
# are about 70 MB; only the rows of the minutes recomputed are kept
_RESUME_BYTES: Final = (4 << 20, 32 << 20, 128 << 20)
_AMPS, _WATTS, _FLAGS = (operator.itemgetter(i) for i in (6, 7, 8))
_OVER: Final = int(Flag.OVER_RANGE)

TailReader = Callable[[int], Iterable[list[str]]]  # a byte budget -> the raw tail's rows


class Rollups:
    """The minutes being rolled up, and their files under LOCAL_DATA_ROOT/rollups/."""

    def __init__(self, data_root: Path, periods: Mapping[str, float],
                 keep_days: float | None, *, fsync: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = rollup_dir(data_root)
        self._periods = dict(periods)
        self._keep_days = keep_days
        self._fsync = fsync
        self._clock = clock
        self._minutes: dict[MinuteKey, Minute] = {}
        self._dirty: set[MinuteKey] = set()
        self._newest: dict[str, int] = {}  # sensor -> its newest stored reading's time
        self._whole_from: dict[str, int] = {}  # minutes before this may be on file already
        self._floor = 0  # ... for a sensor not in _whole_from (set by resume)
        self._last_day = ""  # the newest day file written to
        self._next_retention = 0.0
        self._limiter = RateLimiter()
        self.rows_written = 0
        self.write_errors = 0
        self.files_deleted = 0

    # -- feeding (the writer's hot path) ------------------------------------------------------
    def _minute(self, sensor_id: str, start: int) -> Minute:
        key = (sensor_id, start)
        found = self._minutes.get(key)
        if found is None:
            found = self._minutes[key] = Minute()
            found.partial = start < self._whole_from.get(sensor_id, self._floor)
        self._dirty.add(key)
        return found

    def energy(self, sensor_id: str, start: int, consumed: float, returned: float,
               covered_s: float) -> None:
        """EnergyMeter.split_by's sink: the energy of integrated pairs in one minute."""
        self._minute(sensor_id, start - start % MINUTE_NS).energy(consumed, returned, covered_s)

    def add_runs(self, runs: Iterable[Sequence[Reading]]) -> None:
        """Runs of one stream each (writer.energy.stream_runs), as stored: grouped by sensor
        and minute first, so that the statistics are a few C-level passes per group (a
        batch holds a FLUSH_INTERVAL of every sensor), not Python work per reading or run."""
        groups: dict[MinuteKey, list[Sequence[Reading]]] = {}
        newest = self._newest
        for run in runs:
            first, last = run[0][3], run[-1][3]
            start = first - first % MINUTE_NS
            # the usual case: the run in one minute (by its ends: a clock that steps back and
            # forth again across a minute's start within one run of a tenth of a second aside)
            if start <= last < start + MINUTE_NS:
                key = (run[0][0], start)
                group = groups.get(key)
                if group is None:
                    groups[key] = [run]
                else:
                    group.append(run)
                if last > newest.get(key[0], -1):
                    newest[key[0]] = last
            else:
                self._spread(run)
        for key, group in groups.items():
            self._chunk(self._minute(*key), group[0] if len(group) == 1
                        else list(itertools.chain(*group)))

    def _spread(self, readings: Sequence[Reading]) -> None:
        """Readings of one sensor across minutes: each into its own."""
        sensor_id = readings[0][0]
        for r in readings:
            t = r[3]
            self._minute(sensor_id, t - t % MINUTE_NS).reading(r[7], r[6], bool(r[8] & _OVER))
            if t > self._newest.get(sensor_id, -1):
                self._newest[sensor_id] = t

    @staticmethod
    def _chunk(m: Minute, run: Sequence[Reading]) -> None:
        watts = list(map(_WATTS, run))
        m.readings += len(watts)
        m.sum_w += sum(watts)
        lo, hi = min(watts), max(watts)
        m.min_w = min(m.min_w, lo)
        m.max_w = max(m.max_w, hi)
        m.sum_a += sum(map(_AMPS, run))
        if any(map(_FLAGS, run)):
            m.over_range += sum(1 for r in run if r[8] & _OVER)

    # -- writing -------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the minutes complete enough that changed; evict the old; retention hourly."""
        now = self._clock()
        if now >= self._next_retention:
            self._next_retention = now + RETENTION_EVERY_S
            self.retention(now)
        newest = self._newest
        latest = max(newest.values(), default=0)  # a sensor gone quiet waits for the others
        due = [k for k in self._dirty if newest.get(k[0], 0) >= k[1] + 2 * MINUTE_NS
               or latest >= k[1] + QUIET_NS]
        if due:
            self._write(due)
        for key in [k for k in self._minutes if k not in self._dirty
                    and k[1] + KEEP_NS < newest.get(k[0], 0)]:
            del self._minutes[key]
            sensor_id, start = key
            self._whole_from[sensor_id] = max(self._whole_from.get(sensor_id, 0),
                                              start + MINUTE_NS)

    def close(self) -> None:
        """At stop: every minute that changed, complete or not."""
        self._write(list(self._dirty))

    def _write(self, keys: list[MinuteKey]) -> None:
        """Append the rows of `keys` to their day files; a late fill of a day other than the
        newest compacts that file. On OSError the minutes stay due for the next flush."""
        by_day: dict[str, list[MinuteKey]] = {}
        for key in sorted(keys, key=lambda k: (k[1], k[0])):
            by_day.setdefault(day_name(key[1]), []).append(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for name, day_keys in sorted(by_day.items()):
                self._append(self.folder / name, day_keys)
                if name < self._last_day:
                    compact(self.folder / name)
                elif name > self._last_day:
                    previous, self._last_day = self._last_day, name
                    if previous:
                        compact(self.folder / previous)  # a day's file closes: compacted once
        except OSError as err:
            self.write_errors += 1
            self._limiter.log(log, logging.ERROR, "rollups", "cannot write rollups to %s: %s",
                              self.folder, err)

    def _append(self, path: Path, keys: list[MinuteKey]) -> None:
        stored: dict[tuple[str, str], Rollup] | None = None
        lines = []
        for key in keys:
            m = self._minutes[key]
            if m.partial:  # a change to a minute no longer in memory: add the stored row
                stored = read_file(path) if stored is None else stored
                row = stored.get((format_ts(key[1]), key[0]))
                if row is not None:
                    m.merge(row)
                m.partial = False
            lines.append(format_rollup(m.row(*key)))
        with path.open("a+b") as f:  # appends go to the end, wherever it was read
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                lines.insert(0, header_line())
            else:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a row torn by a kill: ended, it stays a bad row alone
                    lines.insert(0, "\n")
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        self.rows_written += len(keys)
        self._dirty.difference_update(keys)

    def retention(self, now: float) -> None:
        """Delete the day files wholly older than ROLLUP_KEEP_DAYS (by the wall clock)."""
        if self._keep_days is None:
            return
        limit_ns = int((now - self._keep_days * 86400) * 1e9)
        for day_ns, path in list_days(self.folder):
            if day_ns + DAY_NS > limit_ns:
                break
            try:
                path.unlink()
            except OSError as err:
                log.warning("cannot delete %s: %s", path, err)
                continue
            self.files_deleted += 1
            log.info("deleted rollups %s (older than ROLLUP_KEEP_DAYS %g)", path.name,
                     self._keep_days)

    # -- start ---------------------------------------------------------------------------------
    def resume(self, tail: TailReader) -> None:
        """Recompute what the rollups lack (or hold stale) from the raw tail, and write it."""
        remove_temp_files(self.folder)
        days = list_days(self.folder)
        stored: dict[tuple[str, str], Rollup] = {}
        for _, path in days[-2:]:
            stored.update(read_file(path))
        if len(days) >= 2:
            with contextlib.suppress(OSError):
                compact(days[-2][1])  # closed at the newest day's first row, maybe not compacted
        self._last_day = days[-1][1].name if days else ""
        found = self._tail_since(tail, stored)
        if found is None:
            return
        since, rows = found
        self._floor = since
        minutes = recompute(rows, self._periods, since)
        for row in rows:
            self._newest[row.sensor_id] = max(self._newest.get(row.sensor_id, 0), row.ts_ns)
        for key, m in minutes.items():
            self._minutes[key] = m
            if _stale(stored.get((format_ts(key[1]), key[0])), m.row(*key)):
                self._dirty.add(key)
        log.info("rollups resumed from %s: %d minutes recomputed, %d to write",
                 format_ts(since), len(minutes), len(self._dirty))
        self.flush()

    def _tail_since(self, tail: TailReader, stored: Mapping[tuple[str, str], Rollup]
                    ) -> tuple[int, list[StoredRow]] | None:
        """The first minute to recompute (the first a sensor of the tail lacks, at most
        RESUME_NS back), and the raw rows from far enough before it; None: no raw rows."""
        written: dict[str, int] = {}
        for (_, sensor_id), row in stored.items():
            written[sensor_id] = max(written.get(sensor_id, 0), row.minute_ns)
        rows = list(_parsed(tail(_RESUME_BYTES[0])))
        if not rows:
            return None
        newest = max(r.ts_ns for r in rows)
        cap = newest - RESUME_NS - (newest - RESUME_NS) % MINUTE_NS
        since = max(cap, min(written.get(s, cap - MINUTE_NS) + MINUTE_NS
                             for s in {r.sensor_id for r in rows}))
        margin = MINUTE_NS + int(max(map(bridge_limit, self._periods.values()), default=0) * 1e9)
        low = since - margin  # the pair reaching into the first minute starts after this
        reached = min(r.ts_ns for r in rows) < low
        rows = [r for r in rows if r.ts_ns >= low]
        for budget in _RESUME_BYTES[1:]:
            if reached:
                break
            rows, reached = _rows_from(tail(budget), low)
        if not reached:
            log.warning("rollups: the raw tail does not reach back to %s", format_ts(low))
        return since, rows

    def counters(self) -> dict[str, object]:
        return {"rollup_rows": self.rows_written, "rollup_write_errors": self.write_errors,
                "rollup_files_deleted": self.files_deleted}


def _parsed(rows: Iterable[list[str]]) -> Iterator[StoredRow]:
    for fields in rows:
        with contextlib.suppress(ValueError):
            yield parse_row(fields)


def _rows_from(tail: Iterable[list[str]], low: int) -> tuple[list[StoredRow], bool]:
    """The rows at or after `low`, and whether any row before it was met."""
    rows, reached = [], False
    for row in _parsed(tail):
        if row.ts_ns >= low:
            rows.append(row)
        else:
            reached = True
    return rows, reached


def _stale(old: Rollup | None, new: Rollup) -> bool:
    """Whether a stored row lacks what the raw rows hold: other counts, or energy or coverage
    beyond the raw files' rounding (a row written live, of the readings' full precision,
    is kept rather than replaced by its 3-decimal recomputation)."""
    return old is None or (old.readings, old.over_range) != (new.readings, new.over_range) or (
        abs(old.energy_wh - new.energy_wh) > 1e-6 + 1e-4 * abs(new.energy_wh)
        or abs(old.returned_wh - new.returned_wh) > 1e-6 + 1e-4 * abs(new.returned_wh)
        or abs(old.covered_s - new.covered_s) > 1e-3)
