"""File naming, finding the current file, resuming it, and rotating at FILE_SIZE_LIMIT."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from powmon.base.storage import CSV_FIELDS, FileNaming, find_current, header_line
from powmon.common.schema.readings import Flag, Reading
from powmon.writer.resume import tail_streams
from powmon.writer.store import CsvStore
from tests.rows import csv_row

HEADER = header_line()
T0 = 1_795_628_536  # 2026-11-25T17:42:16Z


def reading(seq: int, sensor_id: str = "VIC", session: str = "s1", flags: int = 0) -> Reading:
    return Reading(sensor_id, session, seq, T0 * 10**9 + seq * 1000, 512, 0.0024, 0.0370,
                   0.185, flags)


MakeStore = Callable[..., CsvStore]


@pytest.fixture
def store() -> Iterator[MakeStore]:
    """Stores for a test, closed at teardown (an open file would leak a ResourceWarning)."""
    made: list[CsvStore] = []

    def make(root: Path, limit: int = 10_000_000, fsync: bool = False) -> CsvStore:
        made.append(CsvStore(root, FileNaming.from_data_file("data.csv"), limit, fsync=fsync))
        return made[-1]

    yield make
    for s in made:
        s.close()


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith("data-"))


def rows_of(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_names_put_a_counter_before_the_utc_time() -> None:
    """Names derive from LOCAL_DATA_FILE: stem, zero-padded counter, UTC time, suffix."""
    naming = FileNaming.from_data_file("data.csv")
    assert naming.name(1, T0) == "data-000001-20261125T174216Z.csv"
    assert (
        FileNaming.from_data_file("/power.log").name(12, T0) == "power-000012-20261125T174216Z.log"
    )
    assert FileNaming.from_data_file("readings").name(3, T0) == "readings-000003-20261125T174216Z"


def test_counter_is_read_back_and_other_files_are_not_data_files() -> None:
    """Only names this writer makes count; the legacy data.csv and strangers are ignored."""
    naming = FileNaming.from_data_file("data.csv")
    assert naming.counter_of("data-000042-20261125T174216Z.csv") == 42
    assert naming.counter_of("data-1234567-20261125T174216Z.csv") == 1234567
    for other in ("data.csv", "data-000001-20261125T174216Z.csv.tmp",
                  "other-000001-20261125T174216Z.csv", "data-01-20261125T174216Z.csv",
                  "16693001231-data.csv"):
        assert naming.counter_of(other) is None


def test_current_file_is_the_highest_counter_even_if_the_clock_went_back(tmp_path: Path) -> None:
    """Lexical order is creation order: the counter wins over an earlier timestamp."""
    naming = FileNaming.from_data_file("data.csv")
    (tmp_path / naming.name(1, T0)).write_text(HEADER)
    (tmp_path / naming.name(2, T0 - 86_400)).write_text(HEADER)
    (tmp_path / "data.csv").write_text("legacy")
    current = find_current(tmp_path, naming)
    assert current is not None
    assert current[0] == 2
    assert current[1].name == "data-000002-20261124T174216Z.csv"
    assert find_current(tmp_path / "missing", naming) is None


def test_first_flush_creates_the_directory_and_a_file_with_the_header(
    tmp_path: Path, store: MakeStore
) -> None:
    """data_root is created; the first file gets the header row, then the rows in order."""
    root = tmp_path / "a" / "data"
    s = store(root)
    s.add_rows([csv_row(reading(0)), csv_row(reading(1))])
    assert s.flush() == 2
    [path] = data_files(root)
    rows = rows_of(path)
    assert rows[0] == list(CSV_FIELDS)
    assert [r[3] for r in rows[1:]] == ["0", "1"]
    assert s.files_opened == 1
    assert s.current_file == path.name
    assert s.bytes_in_file == path.stat().st_size


def test_restart_appends_to_the_current_file_without_a_second_header(
    tmp_path: Path, store: MakeStore
) -> None:
    """A new store (a restarted writer) finds the file from the directory and keeps appending."""
    first = store(tmp_path)
    first.add_rows([csv_row(reading(0))])
    first.flush()
    first.close()
    second = store(tmp_path)
    second.add_rows([csv_row(reading(1))])
    second.flush()
    [path] = data_files(tmp_path)
    rows = rows_of(path)
    assert rows.count(list(CSV_FIELDS)) == 1
    assert [r[3] for r in rows[1:]] == ["0", "1"]
    assert second.files_opened == 0


def test_restart_starts_a_new_file_when_the_current_one_is_full(
    tmp_path: Path, store: MakeStore
) -> None:
    """A file at or over the limit is not appended to; the next counter is used."""
    naming = FileNaming.from_data_file("data.csv")
    full = tmp_path / naming.name(7, T0)
    full.write_text(HEADER + "x\n" * 600)
    s = store(tmp_path, limit=1024)
    s.add_rows([csv_row(reading(0))])
    s.flush()
    files = data_files(tmp_path)
    assert [naming.counter_of(p.name) for p in files] == [7, 8]
    assert full.read_text() == HEADER + "x\n" * 600


def test_restart_leaves_a_file_with_a_partial_last_row_alone(
    tmp_path: Path, store: MakeStore
) -> None:
    """A crash can cut the last row short; that file is kept as it is and a new one begins."""
    naming = FileNaming.from_data_file("data.csv")
    broken = tmp_path / naming.name(1, T0)
    broken.write_text(HEADER + "2026-11-25T17:42:16.000000Z,VIC,s1,0,51")
    s = store(tmp_path)
    s.add_rows([csv_row(reading(1))])
    s.flush()
    assert broken.read_text().endswith(",51")
    assert len(data_files(tmp_path)) == 2


def test_restart_does_not_append_under_a_foreign_header(tmp_path: Path, store: MakeStore) -> None:
    """A file from another schema (other columns) never gets rows in the new layout."""
    naming = FileNaming.from_data_file("data.csv")
    (tmp_path / naming.name(1, T0)).write_text("ts,id,raw\n1,VIC,512\n")
    s = store(tmp_path)
    s.add_rows([csv_row(reading(0))])
    s.flush()
    assert len(data_files(tmp_path)) == 2


def test_an_empty_current_file_gets_its_header(tmp_path: Path, store: MakeStore) -> None:
    """A file created just before a crash (0 bytes) is reused and gets the header first."""
    naming = FileNaming.from_data_file("data.csv")
    empty = tmp_path / naming.name(1, T0)
    empty.write_bytes(b"")
    s = store(tmp_path)
    s.add_rows([csv_row(reading(0))])
    s.flush()
    assert data_files(tmp_path) == [empty]
    assert rows_of(empty)[0] == list(CSV_FIELDS)


def test_rotation_splits_at_row_boundaries_with_a_header_in_every_file(
    tmp_path: Path, store: MakeStore
) -> None:
    """Several files, each at most the limit, each starting with the header, rows exactly once."""
    s = store(tmp_path, limit=1024)
    sent = [csv_row(reading(i)) for i in range(300)]
    for start in range(0, 300, 37):  # several flushes, crossing file boundaries
        s.add_rows(sent[start : start + 37])
        s.flush()
    files = data_files(tmp_path)
    assert len(files) > 5
    assert s.files_opened == len(files)
    seqs: list[str] = []
    for path in files:
        data = path.read_bytes()
        assert len(data) <= 1024
        assert data.startswith(HEADER.encode())
        assert data.endswith(b"\n")
        rows = rows_of(path)
        assert all(len(r) == len(CSV_FIELDS) for r in rows)
        seqs += [r[3] for r in rows[1:]]
    assert seqs == [str(i) for i in range(300)]


def test_rotation_counts_bytes_not_characters(tmp_path: Path, store: MakeStore) -> None:
    """Non-ASCII sensor ids take more bytes than characters; no file exceeds the limit."""
    s = store(tmp_path, limit=1024)
    s.add_rows([csv_row(reading(i, sensor_id="Küche-Ω")) for i in range(100)])
    s.flush()
    files = data_files(tmp_path)
    assert all(p.stat().st_size <= 1024 for p in files)
    assert sum(len(rows_of(p)) - 1 for p in files) == 100


def test_new_files_follow_the_highest_counter_and_never_overwrite(
    tmp_path: Path, store: MakeStore
) -> None:
    """Rotation takes the next counter after any file already present."""
    naming = FileNaming.from_data_file("data.csv")
    (tmp_path / naming.name(41, T0)).write_text(HEADER + "y\n" * 600)
    s = store(tmp_path, limit=1024)
    s.add_rows([csv_row(reading(i)) for i in range(30)])
    s.flush()
    counters = [naming.counter_of(p.name) for p in data_files(tmp_path)]
    assert counters[0] == 41
    assert counters[1:] == list(range(42, 42 + len(counters) - 1))
    assert time.gmtime(T0).tm_year == 2026


def test_over_range_readings_keep_their_raw_value(tmp_path: Path, store: MakeStore) -> None:
    """An over-range reading is stored as received, raw intact, with the flag by name."""
    s = store(tmp_path)
    big = Reading("VIC", "s1", 0, T0 * 10**9, 1023, 2.49, 37.7, 188.6, int(Flag.OVER_RANGE))
    s.add_rows([csv_row(big)])
    s.flush()
    [path] = data_files(tmp_path)
    row = dict(zip(CSV_FIELDS, rows_of(path)[1], strict=True))
    assert row["raw"] == "1023"
    assert row["amps"] == "37.7000"
    assert row["flags"] == "over_range"


def test_tail_gives_the_last_stored_seq_of_each_stream(tmp_path: Path, store: MakeStore) -> None:
    """On start the writer learns, from the files, where each (sensor, session) stopped."""
    s = store(tmp_path, limit=1024)
    rows = [csv_row(reading(i, "VIC", "a")) for i in range(40)]
    rows += [csv_row(reading(i, "ATT", "b")) for i in range(5)]
    s.add_rows(rows)
    s.flush()
    tails = tail_streams(tmp_path, FileNaming.from_data_file("data.csv"))
    assert {(t.sensor_id, t.session): t.last_seq for t in tails} == {
        ("VIC", "a"): 39,
        ("ATT", "b"): 4,
    }
