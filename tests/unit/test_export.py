"""powmon export on data files made here: time order across files and sessions, each reading
once, the window and sensors, every format read back, and the chunked sort's merge of runs."""

from __future__ import annotations

import csv
import errno
import gzip
import io
import json
import random
import subprocess
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from powmon.analysis import timeorder
from powmon.analysis.timeorder import time_ordered
from powmon.base.storage import CSV_FIELDS, csv_lines, header_line, parse_reading
from powmon.base.text import format_ts, parse_ts
from powmon.cli import main
from powmon.common.schema.readings import Flag, Reading
from tests.fuzz.strategies import fuzz

S = 1_000_000_000
T0 = parse_ts("2026-11-25T17:59:50.000000Z")


def reading(seq: int, t: float, sensor: str = "VIC", session: str = "s1",
            flags: int = 0, raw: float = 512) -> Reading:
    return Reading(sensor, session, seq, T0 + int(t * S), raw, 12.0, 2.5 + seq / 1000,
                   30.0 + seq / 100, flags)


def write_data(path: Path, rows: list[Reading]) -> Path:
    """A data file as the writer makes it (gzipped for a .gz name)."""
    text = header_line() + "".join(csv_lines(rows))
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two sensors, two sessions of VIC across a rotation (the first file gzipped), a
    replayed reading written after its time neighbours, a reading stored in both files, and
    a cut-off last line."""
    folder = tmp_path / "data"
    folder.mkdir()
    first = [reading(i, i / 10) for i in range(5) if i != 2]
    first += [reading(i, i / 10 + 0.05, "ATT", "a1", Flag.AC_RMS, raw=17.25) for i in range(5)]
    write_data(folder / "data-000001-20261125T175950Z.csv.gz", first)
    late = reading(2, 0.2, flags=Flag.REPLAYED)  # replayed: later in the files than seq 3, 4
    second = [reading(4, 0.4), late, reading(0, 0.6, session="s2"), reading(1, 0.7, session="s2")]
    path = write_data(folder / "data-000002-20261125T180000Z.csv", second)
    with path.open("a", encoding="utf-8") as f:
        f.write("2026-11-25T17:59:51.000000Z,VIC,s2,2,51")  # a crash's cut-off line
    return folder


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["export", *args])


def keys(rows: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    return [(r["timestamp"], r["sensor_id"], r["session"]) for r in rows]


def test_csv_merges_files_and_sessions_in_time_order_each_reading_once(data: Path) -> None:
    """The rows come back with the data files' header and row format, ordered by (timestamp,
    sensor, session, seq), the replayed reading in its place, the twice-stored one once."""
    result = run(str(data))
    assert result.exit_code == 0, result.output
    table = list(csv.reader(result.stdout.splitlines()))
    assert tuple(table[0]) == CSV_FIELDS
    got = [parse_reading(row) for row in table[1:]]
    assert [(r.ts_ns, r.sensor_id, r.session, r.seq) for r in got] == sorted(
        (r.ts_ns, r.sensor_id, r.session, r.seq) for r in got)
    assert [(r.sensor_id, r.session, r.seq) for r in got if r.sensor_id == "VIC"] == [
        ("VIC", "s1", 0), ("VIC", "s1", 1), ("VIC", "s1", 2), ("VIC", "s1", 3), ("VIC", "s1", 4),
        ("VIC", "s2", 0), ("VIC", "s2", 1)]
    assert len(got) == 12  # 7 VIC + 5 ATT; seq 4 of s1 once although stored in both files
    replayed = next(r for r in got if r.session == "s1" and r.seq == 2)
    assert replayed.flags == Flag.REPLAYED
    att = next(r for r in got if r.sensor_id == "ATT")
    assert att.raw == 17.25 and att.flags == Flag.AC_RMS
    assert "".join(csv_lines(got)) == result.stdout.split("\n", 1)[1]  # the writer's format
    assert "skipped 1 row(s)" in result.stderr  # the cut-off line, said


def test_since_until_and_sensor_keep_only_that(data: Path) -> None:
    """--since is inclusive, --until exclusive (as report's window), --sensor repeatable."""
    result = run(str(data), "--sensor", "VIC", "--since", "2026-11-25T17:59:50.1Z",
                 "--until", "2026-11-25T17:59:50.6Z", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["session"], r["seq"]) for r in rows] == [("s1", 1), ("s1", 2), ("s1", 3),
                                                         ("s1", 4)]
    both = run(str(data), "--sensor", "VIC", "--sensor", "ATT", "--until",
               "2026-11-25T17:59:50.1Z")
    assert keys(list(csv.DictReader(both.stdout.splitlines()))) == [
        ("2026-11-25T17:59:50.000000Z", "VIC", "s1"), ("2026-11-25T17:59:50.050000Z", "ATT", "a1")]


def test_jsonl_has_the_uplink_json_fields(data: Path, tmp_path: Path) -> None:
    """One object per line, the fields of base.text.reading_dict (the uplink's json body),
    written to -o's file."""
    out = tmp_path / "out.jsonl"
    result = run(str(data), "--format", "jsonl", "-o", str(out), "--sensor", "ATT")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 5
    assert rows[0] == {
        "timestamp": "2026-11-25T17:59:50.050000Z", "ts_ns": T0 + S // 20, "sensor_id": "ATT",
        "session": "a1", "seq": 0, "raw": 17.25, "volts": 12.0, "amps": 2.5, "watts": 30.0,
        "flags": "ac_rms"}
    assert "exported 5 reading(s)" in result.stderr
    assert list(tmp_path.glob(".out.jsonl.*")) == []  # the partial file was renamed
    (tmp_path / "ref").touch()
    assert out.stat().st_mode == (tmp_path / "ref").stat().st_mode  # the umask's, not 0600


def test_parquet_is_a_typed_table(data: Path, tmp_path: Path) -> None:
    """timestamp is a UTC timestamp[us], seq an int, the measures floats."""
    out = tmp_path / "out.parquet"
    result = run(str(data), "--format", "parquet", "-o", str(out))
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == list(CSV_FIELDS)
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {"timestamp": "timestamp[us, tz=UTC]", "sensor_id": "string",
                     "session": "string", "seq": "int64", "raw": "double", "volts": "double",
                     "amps": "double", "watts": "double", "flags": "string"}
    rows = table.to_pylist()
    assert len(rows) == 12
    assert rows[0]["timestamp"] == datetime(2026, 11, 25, 17, 59, 50, tzinfo=timezone.utc)
    assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)
    assert rows[1]["flags"] == "ac_rms" and rows[1]["raw"] == 17.25


def test_usage_errors_exit_2_naming_the_option(data: Path, tmp_path: Path) -> None:
    cases = {
        ("--format", "parquet"): "--output",
        ("--format", "xml"): "--format",
        ("--since", "yesterday"): "--since",
        ("--since", "2026-11-26", "--until", "2026-11-25"): "--until",
        ("-o", str(tmp_path / "no" / "such" / "x.csv")): "--output",
    }
    for args, option in cases.items():
        result = run(str(data), *args)
        assert result.exit_code == 2, args
        assert option in result.stderr, (args, result.stderr)


def test_nothing_to_export_is_said_and_writes_nothing(data: Path, tmp_path: Path) -> None:
    """No data files, or none of their readings in the window: exit 1 with a line on stderr
    (as report), no file and no header written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(str(empty))
    assert result.exit_code == 1 and "no data files" in result.stderr
    out = tmp_path / "x.csv"
    result = run(str(data), "--since", "2027-01-01", "-o", str(out))
    assert result.exit_code == 1 and "no readings" in result.stderr
    assert not out.exists() and list(tmp_path.glob(".x.csv.*")) == []
    result = run(str(data), "--sensor", "NOPE")
    assert result.exit_code == 1 and "NOPE" in result.stderr and result.stdout == ""


def test_help_lists_export() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "export" in result.output


def shuffled_readings(n: int, seed: int) -> Iterator[Reading]:
    """n readings of three sensors, mostly in order with late ones, some stored twice."""
    rng = random.Random(seed)
    made = [reading(i, i / 100, sensor=f"S{i % 3}") for i in range(n)]
    late = rng.sample(made, n // 10)
    late_set = set(late)
    kept = [r for r in made if r not in late_set]
    yield from kept[: n // 2]
    yield from late  # replayed: after rows later in time
    yield from kept[n // 2 :]
    yield from rng.sample(made, n // 20)  # stored a second time


def test_chunked_sort_merges_many_runs_and_cascades(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """Chunks far smaller than the data: several runs spilled and merged (and, with a small
    FAN_IN, merged into one on the way), giving exactly the sorted readings, each once."""
    monkeypatch.setattr(timeorder, "FAN_IN", 3)
    made: list[Path] = []
    real = timeorder._Runs._new_run

    def spy(self: timeorder._Runs) -> object:
        out = real(self)
        made.append(self.paths[-1])
        return out

    monkeypatch.setattr(timeorder._Runs, "_new_run", spy)
    rows = list(shuffled_readings(3000, seed=1))
    got = list(time_ordered(iter(rows), tmp_path, chunk_rows=97))
    expected = sorted(set(rows), key=lambda r: (r.ts_ns, r.sensor_id, r.session, r.seq))
    assert got == expected
    assert len(got) == 3000
    assert len(made) > 5  # several runs (and merged runs) were written
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone


def test_sort_in_memory_when_it_fits(tmp_path: Path) -> None:
    """Fewer rows than a chunk: sorted in memory, no file written."""
    rows = list(shuffled_readings(200, seed=2))
    got = list(time_ordered(iter(rows), tmp_path, chunk_rows=1000))
    assert [format_ts(r.ts_ns) for r in got] == sorted(format_ts(r.ts_ns) for r in set(rows))
    assert len(got) == 200


def test_a_failed_write_leaves_no_file(data: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half way (a full disk) is one line, exit 1, and neither the output,
    its partial file nor the sort's temporary folder is left."""
    from powmon.analysis import export  # noqa: PLC0415 -- the module, to patch its writer

    def full(out: IO[str], batches: Iterable[list[Reading]]) -> None:
        out.write(header_line())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_csv", full)
    out = tmp_path / "x.csv"
    result = run(str(data), "-o", str(out))
    assert result.exit_code == 1
    assert "cannot export" in result.stderr and "No space left" in result.stderr
    assert list(tmp_path.glob("*x.csv*")) == []
    assert list(tmp_path.glob("powmon-export-*")) == []  # the sort's folder, removed at once


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`powmon export data/ | head -1`: exit 1 once the reader is gone, no traceback."""
    write_data(tmp_path / "d.csv", [reading(i, i / 10) for i in range(5000)])  # > a pipe's buffer
    with subprocess.Popen([sys.executable, "-m", "powmon", "export", str(tmp_path / "d.csv")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().decode().startswith("timestamp,")
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "Broken pipe" not in err, err


finite = st.floats(-1e6, 1e6, allow_nan=False)
# ids as the settings rule allows them (common.schema.readings): no control characters, which
# csv.writer would leave unquoted (a bare CR) and no CSV reader could read back
ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), max_size=20)


@fuzz(200)
@given(st.builds(Reading, ids, ids, st.integers(0, 2**40),
                 st.integers(0, 4_102_444_800 * S), st.one_of(st.integers(-1, 2**20), finite),
                 finite, finite, finite, st.integers(0, 15)))
def test_a_row_reads_back_to_the_reading_that_gives_it(r: Reading) -> None:
    """parse_reading is csv_lines read back: a stored row, parsed and formatted again, is the
    same row (what export's csv output relies on), whatever the ids' quoting."""
    line = csv_lines([r])[0]
    again = parse_reading(next(csv.reader(io.StringIO(line, newline=""))))  # as a file
    assert csv_lines([again]) == [line]
    assert (again.sensor_id, again.session, again.seq, again.flags) == (
        r.sensor_id, r.session, r.seq, r.flags)
    assert type(again.raw) is type(r.raw)


def test_an_unknown_flag_is_not_a_reading() -> None:
    row = next(csv.reader(csv_lines([reading(0, 0)])))
    row[-1] = "replayed|sparkly"
    with pytest.raises(ValueError, match="sparkly"):
        parse_reading(row)
