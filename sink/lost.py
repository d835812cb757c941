"""The loss log: `gaps.csv`, one row per range of readings that is gone for good, with why.

Together with a sink's store it accounts for every reading of every session the sink heard of:
each seq 0..last is either stored once or inside exactly one range here. The file is made on
the first loss, so no file (or a header only) means nothing was lost. The writer's log is
`<LOCAL_DATA_ROOT>/gaps.csv`; the uplink keeps its own beside its spool, since what the uplink
lost may well be in the CSV files.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from powmon.base.text import format_ts
from powmon.sink.filler import Lost

log = logging.getLogger(__name__)

GAP_FIELDS: Final = (
    "detected_at", "sensor_id", "session", "first_seq", "last_seq", "count", "reason",
)
MAX_UNLOGGED: Final = 10_000  # lost ranges kept while the log cannot be written
TAIL_BYTES: Final = 4 << 20  # how much of the log a resuming sink reads back (~50,000 rows)

Range = tuple[int, int]  # [lo, hi)


class LossLog:
    """Appends lost ranges to a CSV file; what cannot be written yet is kept and retried."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._unlogged: list[Lost] = []

    @property
    def unlogged(self) -> int:
        return len(self._unlogged)

    def add(self, lost: Sequence[Lost]) -> None:
        """Log these (and any kept from before); on OSError keep them, bounded, and say so."""
        self._unlogged = (self._unlogged + list(lost))[-MAX_UNLOGGED:]
        if not self._unlogged:
            return
        try:
            self._write(self._unlogged)
        except OSError as err:
            log.error("cannot write %s: %s; %d lost ranges kept", self.path, err,
                      len(self._unlogged))
        else:
            self._unlogged = []

    def logged(self, limit: int = TAIL_BYTES) -> dict[tuple[str, str], list[Range]]:
        """The [lo, hi) ranges the newest `limit` bytes of the log name, per stream.

        A sink that resumes finds the holes in what it stored; those already given up stay
        holes for ever, and asking for them again would log them twice (or store a reading the
        log says is gone). Unreadable rows are left out: at worst a range is asked for again.
        """
        found: dict[tuple[str, str], list[Range]] = {}
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - limit))
                data = f.read(limit)
        except FileNotFoundError:
            return found
        except OSError as err:
            log.warning("cannot read %s back: %s", self.path, err)
            return found
        if size > limit:
            data = data[data.find(b"\n") + 1 :]  # the first line is cut
        text = data.decode("utf-8", errors="replace")
        for row in csv.reader(text.splitlines()):
            if len(row) != len(GAP_FIELDS) or not (row[3].isdigit() and row[4].isdigit()):
                continue  # the header, or a torn row
            lo, hi = int(row[3]), int(row[4]) + 1
            if lo < hi:  # device_dropped rows name samples that took no seq
                found.setdefault((row[1], row[2]), []).append((lo, hi))
        return found

    def _write(self, lost: Sequence[Lost]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            out = csv.writer(f, lineterminator="\n")
            if f.tell() == 0:
                out.writerow(GAP_FIELDS)
            out.writerows(
                (format_ts(g.detected_ns), g.sensor_id, g.session, g.first, g.last, g.count,
                 g.reason)
                for g in lost
            )
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())

