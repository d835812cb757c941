"""What the writer learns from its own files on start: last seq, open holes, old sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from powmon.base.storage import FileNaming
from powmon.common.schema.readings import Flag, Reading
from powmon.sink.tracker import StreamState
from powmon.writer.resume import scan_session, tail_streams
from powmon.writer.store import CsvStore
from tests.rows import csv_row

NAMING = FileNaming.from_data_file("data.csv")


def reading(seq: int, session: str = "s1", sensor: str = "VIC", flags: int = 0) -> Reading:
    return Reading(sensor, session, seq, 1_795_628_536 * 10**9 + seq, 512, 0.0, 0.0, 0.0, flags)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CsvStore]:
    s = CsvStore(tmp_path, NAMING, 10_000_000, fsync=False)
    yield s
    s.close()


def write(store: CsvStore, readings: list[Reading]) -> None:
    store.add_rows([csv_row(r) for r in readings])
    store.flush()


def test_a_hole_left_open_by_a_killed_writer_is_found_again(
    tmp_path: Path, store: CsvStore
) -> None:
    """0..9 and 15..20 stored, 10..14 never: the tail reports the hole and the last seq."""
    write(store, [reading(s) for s in [*range(10), *range(15, 21)]])
    write(store, [reading(s, "s2", "ATT") for s in range(3)])
    assert set(tail_streams(tmp_path, NAMING)) == {
        StreamState("VIC", "s1", 20, 0, ((10, 15),)),
        StreamState("ATT", "s2", 2, 0, ()),
    }


def test_replayed_rows_fill_holes_and_do_not_make_new_ones(tmp_path: Path, store: CsvStore) -> None:
    """Replayed rows come after later live rows; below the first live row they vouch nothing."""
    replayed = int(Flag.REPLAYED)
    write(store, [reading(s) for s in [*range(100, 110), *range(120, 130)]])
    write(store, [reading(s, flags=replayed) for s in [*range(50, 60), *range(110, 118)]])
    [tail] = tail_streams(tmp_path, NAMING)
    assert tail == StreamState("VIC", "s1", 129, 100, ((118, 120),))


def test_the_tail_reads_only_the_newest_bytes(tmp_path: Path, store: CsvStore) -> None:
    """With a small budget only the newest rows count: the floor is where they begin."""
    write(store, [reading(s) for s in range(2000)])
    [tail] = tail_streams(tmp_path, NAMING, limit=4096)
    assert tail.last_seq == 1999
    assert 1900 < tail.floor < 1999
    assert tail.missing == ()


def test_a_session_older_than_the_tail_is_found_by_searching(
    tmp_path: Path, store: CsvStore
) -> None:
    """A reader silent for long: its last stored seq is found in the files, others are not."""
    write(store, [reading(s, "quiet") for s in range(40)])
    write(store, [reading(s, "busy") for s in range(3000)])
    tails = tail_streams(tmp_path, NAMING, limit=4096)
    assert ("VIC", "quiet") not in {(t.sensor_id, t.session) for t in tails}
    assert scan_session(tmp_path, NAMING, "VIC", "quiet") == 39
    assert scan_session(tmp_path, NAMING, "ATT", "quiet") is None
    assert scan_session(tmp_path, NAMING, "VIC", "never") is None
