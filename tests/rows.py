"""The CSV columns of a reading field by field: the tests' reference for the one formatter.

PowMon formats rows in one step (base.storage.csv_lines); tests write data files through
csv.writer from these values, and the fuzz test holds csv_lines to what csv.writer makes of
them, so the fast formatter cannot drift from the csv module's quoting.
"""

from __future__ import annotations

from collections.abc import Iterable

from powmon.base.text import flag_names, format_ts
from powmon.common.schema.readings import Reading

CsvRow = tuple[str, str, str, int, float, str, str, str, str]


def csv_rows(readings: Iterable[Reading]) -> list[CsvRow]:
    """The CSV_FIELDS values of each reading, in order, formatted for a csv.writer."""
    return [
        (
            format_ts(r.ts_ns), r.sensor_id, r.session, r.seq, r.raw, f"{r.volts:.5f}",
            f"{r.amps:.4f}", f"{r.watts:.3f}", flag_names(r.flags),
        )
        for r in readings
    ]


def csv_row(r: Reading) -> CsvRow:
    """The CSV row of one reading (csv_rows of one)."""
    return csv_rows((r,))[0]
