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

from powmon.common.schema import format_ts
from powmon.sink.filler import Lost

log = logging.getLogger(__name__)

GAP_FIELDS: Final = (
    "detected_at", "sensor_id", "session", "first_seq", "last_seq", "count", "reason",
)
MAX_UNLOGGED: Final = 10_000  # lost ranges kept while the log cannot be written


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
