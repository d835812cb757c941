"""The rollups' storage format: one row per sensor per UTC minute, in CSV files of their own.

The writer keeps them (writer/rollups.py) beside the data, in `<LOCAL_DATA_ROOT>/rollups/`, so
that a tool or the page can answer "sensors S between T0 and T1" over a year without reading
raw rows. Columns (ROLLUP_FIELDS; docs/writer.md):

    minute       the minute's start, UTC, in base.text.format_ts's form (`...T17:42:00.000000Z`)
    sensor_id
    readings     stored readings whose timestamp falls in the minute
    mean_w       their mean watts (per reading, not time-weighted); empty with no reading
    min_w max_w  their least and greatest watts; empty with no reading
    mean_a       their mean amps; empty with no reading
    energy_wh    consumed energy: the parts of energy.json's integrated pairs in the minute
    returned_wh  the negative part (current flowing the other way), as energy.json counts it
    covered_s    seconds of the minute (0 to 60) that integrated pairs cover: coverage in
                 seconds (a fraction is covered_s / 60); a pair across a hole covers nothing
    over_range   readings flagged over_range

One file per UTC day, all sensors in it: `minutes-2026-12-08.csv` (at most 1440 rows per
sensor: about 1.3 MB a day for 8 sensors). A day because a range picks its files by name
without opening others, a 1-year query over 8 sensors opens 365 small files (file opening
is not what a 4.2 M-row read spends its time on: parsing is, and the reader parses only the
rows of the sensors and minutes asked for), retention deletes whole days, and a late fill
appends one row to a small file whose compaction rewrites about a megabyte, where a month's
file would be 40 MB.

Files are append-only while written: a minute written again (a late reading changed it) is
appended, and the last row of a (minute, sensor) wins, in read_rollups as in compaction
(`compact`: the rows deduplicated and sorted by minute and sensor, written to a temporary
file, fsynced and renamed over the file, so a kill leaves the old file or the new one).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
from collections.abc import Collection, Iterable, Iterator
from math import isfinite
from pathlib import Path
from typing import Final, NamedTuple

from powmon.base.storage import LINE_TERMINATOR, csv_field
from powmon.base.text import format_ts, parse_ts

ROLLUP_DIR: Final = "rollups"
MINUTE_NS: Final = 60 * 1_000_000_000
DAY_NS: Final = 86_400 * 1_000_000_000
ROLLUP_FIELDS: Final = (
    "minute", "sensor_id", "readings", "mean_w", "min_w", "max_w", "mean_a", "energy_wh",
    "returned_wh", "covered_s", "over_range",
)
_NAME: Final = re.compile(r"minutes-(\d{4}-\d\d-\d\d)\.csv")
_TEMP_SUFFIX: Final = ".tmp"


class Rollup(NamedTuple):
    """One rollup row, typed; the means, min and max are None for a minute with no reading."""

    minute_ns: int
    sensor_id: str
    readings: int
    mean_w: float | None
    min_w: float | None
    max_w: float | None
    mean_a: float | None
    energy_wh: float
    returned_wh: float
    covered_s: float
    over_range: int


def header_line() -> str:
    return ",".join(ROLLUP_FIELDS) + LINE_TERMINATOR


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_rollup(r: Rollup) -> str:
    """The one formatter of a rollup row (with its line end). Watts to the raw files' 3
    decimals for min/max (so they equal the raw rows'), means to 4/6, energy to 1e-9 Wh (a
    decade of minutes then sums to within a milliwatt-hour of energy.json)."""
    return (
        f"{format_ts(r.minute_ns)},{csv_field(r.sensor_id)},{r.readings},{_num(r.mean_w, 4)},"
        f"{_num(r.min_w, 3)},{_num(r.max_w, 3)},{_num(r.mean_a, 6)},{r.energy_wh:.9f},"
        f"{r.returned_wh:.9f},{r.covered_s:.6f},{r.over_range}{LINE_TERMINATOR}"
    )


# (a day's text, its start in ns), replaced whole (threads each see a pair that belongs together)
_day_cache: list[tuple[str, int]] = [("", 0)]


def _minute_ns(text: str) -> int:
    """A minute's start read back: strptime once per day, not once per minute (a year's read
    would spend most of its time in it); any other timestamp through parse_ts."""
    if len(text) == 27 and text[10] == "T" and text[13] == ":" and text[16:] == ":00.000000Z":
        hours, minutes = text[11:13], text[14:16]
        if hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60:
            day, start = _day_cache[0]
            if day != text[:10]:
                day, start = text[:10], parse_ts(text[:10] + "T00:00:00.000000Z")
                _day_cache[0] = (day, start)
            return start + (int(hours) * 60 + int(minutes)) * MINUTE_NS
    return parse_ts(text)


def parse_rollup(fields: list[str]) -> Rollup:
    """The one parser of a rollup row's fields; ValueError for anything else (a header, a
    torn or foreign row, a number that is not finite)."""
    if len(fields) != len(ROLLUP_FIELDS):
        raise ValueError(f"{len(fields)} fields, expected {len(ROLLUP_FIELDS)}")
    readings = int(fields[2])
    energy, returned, covered = float(fields[7]), float(fields[8]), float(fields[9])
    if readings:
        mean_w, min_w, max_w = float(fields[3]), float(fields[4]), float(fields[5])
        mean_a = float(fields[6])
        check = energy + returned + covered + mean_w + min_w + max_w + mean_a
        if not isfinite(check):  # a NaN or an infinity anywhere makes the sum one
            raise ValueError(f"a number of {fields} is not finite")
        return Rollup(_minute_ns(fields[0]), fields[1], readings, mean_w, min_w, max_w,
                      mean_a, energy, returned, covered, int(fields[10]))
    if not isfinite(energy + returned + covered):
        raise ValueError(f"a number of {fields} is not finite")
    return Rollup(_minute_ns(fields[0]), fields[1], 0, None, None, None, None, energy,
                  returned, covered, int(fields[10]))


def rollup_dir(data_root: Path) -> Path:
    return data_root / ROLLUP_DIR


def day_name(ts_ns: int) -> str:
    """The name of the file that holds the minute of `ts_ns`."""
    return f"minutes-{format_ts(ts_ns - ts_ns % DAY_NS)[:10]}.csv"


def list_days(folder: Path) -> list[tuple[int, Path]]:
    """The rollup files in `folder` as (the day's start in ns, path), oldest first."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    days = []
    for name in names:
        match = _NAME.fullmatch(name)
        if match is not None:
            with contextlib.suppress(ValueError):
                days.append((parse_ts(f"{match[1]}T00:00:00.000000Z"), folder / name))
    return sorted(days)


def read_file(path: Path, sensors: Collection[str] | None = None, since: str = "",
              until: str = "~") -> dict[tuple[str, str], Rollup]:
    """The rows of one file as {(minute text, sensor_id): row}, the last of a (minute, sensor)
    winning; only those of `sensors` (None: all) with since <= minute text < until (format_ts
    texts, whose text order is time order), which are the only rows parsed. A row that does
    not parse (torn by a kill, or foreign) is passed over."""
    out: dict[tuple[str, str], Rollup] = {}
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            for fields in csv.reader(f):
                if len(fields) != len(ROLLUP_FIELDS) or not since <= fields[0] < until:
                    continue
                if sensors is not None and fields[1] not in sensors:
                    continue
                with contextlib.suppress(ValueError):
                    out[fields[0], fields[1]] = parse_rollup(fields)
    except FileNotFoundError:
        pass
    return out


def read_rollups(data_root: Path, sensors: Collection[str] | None, since_ns: int,
                 until_ns: int) -> list[Rollup]:
    """The rollups of `sensors` (None: all) for minutes starting in [since_ns, until_ns),
    ordered by minute then sensor, a minute written again counted once (its last row)."""
    return list(iter_rollups(data_root, sensors, since_ns, until_ns))


def iter_rollups(data_root: Path, sensors: Collection[str] | None, since_ns: int,
                 until_ns: int) -> Iterator[Rollup]:
    """read_rollups one day file at a time (a year's rows need not all be held at once)."""
    wanted = None if sensors is None else frozenset(sensors)
    # minutes start on whole microseconds: [since, until) rounded up to them is the same set
    since, until = format_ts(-(-since_ns // 1000) * 1000), format_ts(-(-until_ns // 1000) * 1000)
    for day_ns, path in list_days(rollup_dir(data_root)):
        if day_ns + DAY_NS <= since_ns or day_ns >= until_ns:
            continue
        rows = read_file(path, wanted, since, until)
        yield from (rows[k] for k in sorted(rows))


def write_file(path: Path, rows: Iterable[Rollup]) -> None:
    """Write a whole file atomically: a temporary file, fsynced, renamed over `path` (and the
    folder fsynced), so a kill leaves the old file or the new one; raises OSError."""
    tmp = path.with_name(path.name + _TEMP_SUFFIX)
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            f.write(header_line())
            f.writelines(format_rollup(r) for r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compact(path: Path) -> int:
    """Rewrite a file with one row per (minute, sensor), the last one, sorted; returns the
    rows it holds now. Raises OSError."""
    rows = read_file(path)
    write_file(path, (rows[k] for k in sorted(rows)))
    return len(rows)


def remove_temp_files(folder: Path) -> None:
    """Temporary files a kill left in mid-compaction (the file itself is whole)."""
    for day in folder.glob("minutes-*.csv" + _TEMP_SUFFIX):
        with contextlib.suppress(OSError):
            day.unlink()
