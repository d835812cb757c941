"""What the README and docs/tools.md promise of the command line, where no process is needed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from powmon.base.storage import CSV_FIELDS
from powmon.base.text import parse_ts
from powmon.cli import main
from powmon.common.schema.readings import Reading
from tests.rows import csv_row

S = 1_000_000_000
T0 = parse_ts("2026-11-25T22:59:00.000000Z")
MIDNIGHT = parse_ts("2026-11-26T00:00:00.000000Z")


def test_report_by_day_gives_one_period_per_utc_day_with_its_energy(tmp_path: Path) -> None:
    """Readings every 10 s from 22:59 on the 25th (100 W) to 00:01 on the 26th (200 W from
    midnight), one file per day: `--by day` gives two periods cut at midnight UTC (not three
    hours), each clipped to the data, with each day's own energy; the pair across midnight
    counts for the 25th."""
    readings = [
        Reading("VIC", "s1", seq, t, 512, 0.0, 0.0, 100.0 if t < MIDNIGHT else 200.0)
        for seq, t in enumerate(range(T0, T0 + 373 * 10 * S, 10 * S))
    ]
    for name, part in (("data-000001-20261125T225900Z.csv", readings[:366]),
                       ("data-000002-20261126T000000Z.csv", readings[366:])):
        with (tmp_path / name).open("w", newline="", encoding="utf-8") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(CSV_FIELDS)
            out.writerows(csv_row(r) for r in part)
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--by", "day", "--json"])
    assert result.exit_code == 0, result.output
    periods = json.loads(result.stdout)["sensors"]["VIC"]["periods"]
    assert [(p["start"], p["end"]) for p in periods] == [
        ("2026-11-25T22:59:00.000000Z", "2026-11-26T00:00:00.000000Z"),
        ("2026-11-26T00:00:00.000000Z", "2026-11-26T00:01:00.000000Z"),
    ]
    assert [p["readings"] for p in periods] == [366, 7]
    # 25th: 3650 s at 100 W, then 10 s from 100 W to 200 W (150 W); 26th: 60 s at 200 W
    assert periods[0]["energy_wh"] == pytest.approx((3650 * 100 + 10 * 150) / 3600, rel=1e-4)
    assert periods[1]["energy_wh"] == pytest.approx(60 * 200 / 3600, rel=1e-4)
    assert [p["coverage"] for p in periods] == [1.0, 1.0]
