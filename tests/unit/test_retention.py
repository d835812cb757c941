"""Retention's rules on real files (writer/retention.py) and the writer's full-disk hook."""

from __future__ import annotations

import errno
import gzip
import logging
from pathlib import Path

import pytest

from powmon.base.storage import FileNaming, header_line, list_files
from powmon.base.text import format_ts
from powmon.writer.retention import Retention, count_rows, file_span
from powmon.writer.writer import CsvSink, WriterConfig

NAMING = FileNaming.from_data_file("data.csv")
DAY = 86_400
NOW = 1_795_628_536.0  # 2026-11-25T17:42:16Z


def write_file(root: Path, counter: int, stamps: list[float], *, packed: bool = False) -> Path:
    """A data file of one row per timestamp (seconds), plain or gzipped."""
    rows = "".join(f"{format_ts(int(ts * 1e9))},VIC,s{counter},{i},512,0.00240,0.0370,0.185,\n"
                   for i, ts in enumerate(stamps))
    path = root / NAMING.name(counter, stamps[0] if stamps else NOW)
    text = (header_line() + rows).encode()
    if packed:
        path = path.with_name(path.name + ".gz")
        text = gzip.compress(text)
    path.write_bytes(text)
    return path


def retention(root: Path, max_bytes: int | None = None,
              keep_days: float | None = None) -> Retention:
    return Retention(root, NAMING, max_bytes=max_bytes, keep_days=keep_days, wall=lambda: NOW)


def counters(root: Path) -> list[int]:
    return [c for c, _ in list_files(root, NAMING)]


def test_the_cap_deletes_the_oldest_closed_files_and_never_the_newest(tmp_path: Path) -> None:
    paths = [write_file(tmp_path, c, [NOW + c + i / 10 for i in range(10)]) for c in (1, 2, 3)]
    size = paths[0].stat().st_size
    r = retention(tmp_path, max_bytes=2 * size)
    assert r.enforce() == 1
    assert counters(tmp_path) == [2, 3]
    assert (r.files_deleted, r.bytes_deleted) == (1, size)
    assert r.counters()["oldest_data"] == format_ts(int((NOW + 2) * 1e9))
    tiny = retention(tmp_path, max_bytes=1024)  # below even the newest file alone
    for _ in range(2):
        tiny.enforce()
    assert counters(tmp_path) == [3], "the file being written is never deleted"


def test_the_age_rule_reads_the_newest_row_and_stops_at_the_first_file_it_keeps(
    tmp_path: Path,
) -> None:
    write_file(tmp_path, 1, [NOW - 40 * DAY, NOW - 39 * DAY], packed=True)
    write_file(tmp_path, 2, [NOW - 30 * DAY, NOW - 2 * DAY, NOW - 20 * DAY])  # newest not last
    write_file(tmp_path, 3, [NOW - 25 * DAY])  # old, but after a file that is kept
    write_file(tmp_path, 4, [NOW - 50 * DAY])  # the newest file: never deleted
    r = retention(tmp_path, keep_days=10)
    assert r.enforce() == 1
    assert counters(tmp_path) == [2, 3, 4]
    assert r.counters()["oldest_data"] == format_ts(int((NOW - 30 * DAY) * 1e9))


def test_a_compressed_file_and_its_original_go_together_and_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    stamps = [NOW - 9 * DAY, NOW - 8 * DAY, NOW - 7 * DAY]
    plain = write_file(tmp_path, 1, stamps)
    packed = write_file(tmp_path, 1, stamps, packed=True)  # a compression cut short
    write_file(tmp_path, 2, [NOW])
    assert count_rows(packed) == count_rows(plain) == 3
    assert file_span(packed) == file_span(plain)
    freed = plain.stat().st_size + packed.stat().st_size
    r = retention(tmp_path, keep_days=1)
    with caplog.at_level(logging.INFO, "powmon.writer.retention"):
        assert r.enforce() == 1
    assert not plain.exists() and not packed.exists()
    assert r.bytes_deleted == freed
    assert (f"retention: deleted {plain.name} ({format_ts(int(stamps[0] * 1e9))} to "
            f"{format_ts(int(stamps[-1] * 1e9))}, 3 rows, {freed} bytes): DATA_KEEP_DAYS 1"
            ) in caplog.text


def test_free_one_frees_only_with_retention_on_and_only_a_closed_file(tmp_path: Path) -> None:
    for c in (1, 2):
        write_file(tmp_path, c, [NOW + c])
    assert not retention(tmp_path).free_one()
    assert counters(tmp_path) == [1, 2]
    on = retention(tmp_path, max_bytes=1 << 30)
    assert on.enforce() == 0
    assert on.free_one()
    assert counters(tmp_path) == [2]
    assert not on.free_one()


def _sink(root: Path, data_max_bytes: int | None) -> CsvSink:
    config = WriterConfig(
        data_root=root, data_file="data.csv", file_size_limit=10_000_000, flush_interval=0.5,
        sync_write=False, backend="tcp://127.0.0.1:1", frontend="tcp://127.0.0.1:2", hwm=1000,
        heartbeat_interval=1.0, data_max_bytes=data_max_bytes,
    )
    return CsvSink(config, clock=lambda: 0.0)


@pytest.mark.parametrize("on", [True, False])
def test_a_full_disk_costs_the_oldest_closed_file_only_with_retention_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on: bool,
) -> None:
    for c in (1, 2, 3):
        write_file(tmp_path, c, [NOW + c])
    sink = _sink(tmp_path, 1 << 30 if on else None)
    flush = sink.files.flush
    full = [True]

    def full_once() -> int:
        if full.pop() if full else False:
            raise OSError(errno.ENOSPC, "No space left on device")
        return flush()

    monkeypatch.setattr(sink.files, "flush", full_once)
    sink.files.add_rows([[format_ts(int(NOW * 1e9)), "VIC", "s", 0, 512, 0, 0, 0, ""]])
    try:
        assert sink.flush(1.0) is on
        assert counters(tmp_path) == ([2, 3] if on else [1, 2, 3])
        assert sink.files.pending_rows == (0 if on else 1)
        assert sink.counters()["files_deleted"] == (1 if on else 0)
    finally:
        sink.files.close()
