"""powmon report on CSV files made here: file order, periods, windows, bad rows, time forms."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from powmon.analysis.datafiles import data_files
from powmon.analysis.report import build_report
from powmon.analysis.timespec import parse_time
from powmon.base.storage import CSV_FIELDS
from powmon.base.text import parse_ts
from powmon.cli import main
from powmon.common.schema.readings import Flag, Reading
from tests.rows import csv_row

S = 1_000_000_000
T0 = parse_ts("2026-11-25T17:59:50.000000Z")


def write_csv(path: Path, readings: list[Reading]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(CSV_FIELDS)
        out.writerows(csv_row(r) for r in readings)
    return path


def reading(
    seq: int,
    t: float,
    watts: float = 100.0,
    sensor: str = "VIC",
    flags: int = 0,
    session: str = "s1",
) -> Reading:
    return Reading(sensor, session, seq, T0 + int(t * S), 512, 0.0, watts / 5, watts, flags)


def steady(first: int, last: int, watts: float = 100.0) -> list[Reading]:
    """Readings first..last, one every 0.1 s from T0."""
    return [reading(i, i / 10, watts) for i in range(first, last + 1)]


def test_rotated_files_are_read_in_counter_order_and_gaps_csv_is_skipped(tmp_path: Path) -> None:
    """Names give creation order whatever order they are passed in; gaps.csv is not data."""
    second = write_csv(tmp_path / "data-000002-20261125T180000Z.csv", steady(100, 199))
    first = write_csv(tmp_path / "data-000001-20261125T175950Z.csv", steady(0, 99))
    (tmp_path / "gaps.csv").write_text("detected_at,sensor_id,session,first_seq\n")
    assert data_files([second, tmp_path / "gaps.csv", first]) == [first, second]
    assert data_files([tmp_path]) == [first, second]


def test_energy_is_split_exactly_at_hour_boundaries(tmp_path: Path) -> None:
    """100 W from 17:59:50 for 19.9 s: 10 s fall in the 17:00 hour, 9.9 s in the 18:00 one."""
    path = write_csv(tmp_path / "data-000001-20261125T175950Z.csv", steady(0, 199))
    doc, _ = build_report([path], "hour", (), None, None)
    periods = doc["sensors"]["VIC"]["periods"]
    assert [p["start"] for p in periods] == [
        "2026-11-25T17:59:50.000000Z",
        "2026-11-25T18:00:00.000000Z",
    ]
    assert periods[0]["energy_wh"] == pytest.approx(100 * 10 / 3600, abs=1e-6)
    assert periods[1]["energy_wh"] == pytest.approx(100 * 9.9 / 3600, abs=1e-6)
    assert [p["coverage"] for p in periods] == [1.0, 1.0]  # clipped to the data's span
    assert periods[0]["readings"] == 100


def test_since_and_until_clip_the_window_and_count_missing_time(tmp_path: Path) -> None:
    """A window wider than the data: the uncovered part lowers coverage, adds no energy."""
    path = write_csv(tmp_path / "d.csv", steady(0, 100))  # 10 s of data
    since, until = T0 - 5 * S, T0 + 15 * S
    doc, _ = build_report([path], None, (), since, until)
    vic = doc["sensors"]["VIC"]
    assert vic["coverage"] == pytest.approx(0.5)
    assert vic["energy_wh"] == pytest.approx(100 * 10 / 3600, abs=1e-6)
    assert vic["missing_s"] == pytest.approx(10.0)


def test_replayed_rows_later_in_the_file_fill_their_hole(tmp_path: Path) -> None:
    """Rows 30..39 written after 40..99 (a replay) give the same energy as in order."""
    replayed = [reading(i, i / 10, flags=Flag.REPLAYED) for i in range(30, 40)]
    path = write_csv(tmp_path / "d.csv", steady(0, 29) + steady(40, 99) + replayed)
    doc, _ = build_report([path], None, (), None, None)
    assert doc["sensors"]["VIC"]["energy_wh"] == pytest.approx(100 * 9.9 / 3600, abs=1e-6)
    assert doc["sensors"]["VIC"]["coverage"] == pytest.approx(1.0)


def test_statistics_and_over_range_count(tmp_path: Path) -> None:
    """min/max/readings per sensor, over_range rows counted, --sensor selects."""
    readings = [
        reading(0, 0, 10),
        reading(1, 0.1, 30, flags=Flag.OVER_RANGE),
        reading(2, 0.2, 20),
        reading(0, 0, 5, sensor="ATT"),
    ]
    path = write_csv(tmp_path / "d.csv", readings)
    doc, _ = build_report([path], None, ("VIC",), None, None)
    vic = doc["sensors"]["VIC"]
    assert set(doc["sensors"]) == {"VIC"}
    assert (vic["min_w"], vic["max_w"], vic["readings"], vic["over_range"]) == (10, 30, 3, 1)
    assert vic["mean_w"] == pytest.approx(22.5)  # time-weighted: (20 + 25) / 2


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    """A cut-off last line and a bad value are named on stderr, not silently dropped."""
    path = write_csv(tmp_path / "d.csv", steady(0, 9))
    with path.open("a", encoding="utf-8") as f:
        f.write("2026-11-25T18:00:00.000000Z,VIC,s1,10,512,0,nan,nan,\n2026-11-25T18:0")
    result = CliRunner().invoke(main, ["report", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bad_rows"] == 2
    assert "skipped 2 row(s)" in result.stderr and "line 12" in result.stderr


def test_the_table_is_aligned(tmp_path: Path) -> None:
    """One header and one line per sensor, columns aligned."""
    path = write_csv(tmp_path / "d.csv", [*steady(0, 9), reading(0, 0, 5, sensor="ATTIC")])
    result = CliRunner().invoke(main, ["report", str(path)])
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["sensor", "period", "energy_Wh"]
    assert len({line.index("..") for line in lines[1:3]}) == 1


def test_usage_errors_exit_2() -> None:
    """A bad time or a missing file is one line and exit 2, click's convention."""
    runner = CliRunner()
    bad_time = runner.invoke(main, ["report", ".", "--since", "yesterday-ish"])
    assert bad_time.exit_code == 2 and "is not a time" in bad_time.output
    missing = runner.invoke(main, ["report", "/no/such/file.csv"])
    assert missing.exit_code == 2 and "no such file" in missing.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25", "2026-11-25T00:00:00.000000Z"),
        ("2026-11-25T17:42:16Z", "2026-11-25T17:42:16.000000Z"),
        ("2026-11-25T18:42:16+01:00", "2026-11-25T17:42:16.000000Z"),
        ("2026-11-25T17:42", "2026-11-25T17:42:00.000000Z"),
        ("-2h", "2026-11-25T15:42:16.000000Z"),
        ("-90s", "2026-11-25T17:40:46.000000Z"),
        ("now", "2026-11-25T17:42:16.000000Z"),
    ],
)
def test_time_forms(text: str, expected: str) -> None:
    """ISO 8601 with Z or an offset, a date alone (UTC midnight), or relative to now."""
    now = parse_ts("2026-11-25T17:42:16.000000Z")
    assert parse_time(text, now) == parse_ts(expected)
