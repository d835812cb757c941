"""Compressed data files (.csv.gz, .csv.zst) read exactly like plain ones, by every reader of
the storage format: the listing, the writer's tail, the offline tools."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from powmon.base.storage import FileNaming, csv_lines, header_line, list_files, read_tail
from powmon.cli import main
from powmon.common.schema.readings import Reading
from powmon.writer.resume import tail_rows

NAMING = FileNaming.from_data_file("data.csv")
T0 = 1_795_628_536 * 10**9  # 2026-11-25T17:42:16Z


def readings(first: int, count: int, session: str = "s1") -> list[Reading]:
    return [Reading("VIC", session, seq, T0 + seq * 10**8, 512, 2.5, 1.0 + seq % 7, 5.0 + seq % 7)
            for seq in range(first, first + count)]


def write(root: Path, counter: int, rows: list[Reading]) -> Path:
    path = root / NAMING.name(counter, T0 / 1e9 + counter)
    path.write_text(header_line() + "".join(csv_lines(rows)), encoding="utf-8")
    return path


def compress(path: Path, kind: str, keep: bool = False) -> Path:
    packed = path.with_name(path.name + (".gz" if kind == "gzip" else ".zst"))
    data = path.read_bytes()
    packed.write_bytes(gzip.compress(data) if kind == "gzip"
                       else zstandard.ZstdCompressor().compress(data))
    if not keep:
        path.unlink()
    return packed


def report(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["report", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_report_over_compressed_files_equals_the_report_over_them_uncompressed(
    tmp_path: Path, kind: str
) -> None:
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    for counter, first in ((1, 0), (2, 300), (3, 600)):
        write(plain, counter, readings(first, 300))
    shutil.copytree(plain, packed)
    for _, path in list_files(packed, NAMING)[:2]:  # the newest stays plain, as when writing
        compress(path, kind)
    assert [p.name.endswith((".gz", ".zst")) for _, p in list_files(packed, NAMING)] == [
        True, True, False]
    assert report(str(packed)) == report(str(plain))
    assert report(str(packed), "--by", "hour") == report(str(plain), "--by", "hour")


def test_a_file_and_its_compressed_copy_are_listed_and_read_once(tmp_path: Path) -> None:
    """Between a compressed copy's rename and the original's removal both exist: the original
    is listed (it is whole), by the writer's listing and by the tools alike."""
    first = write(tmp_path, 1, readings(0, 50))
    compress(first, "gzip", keep=True)
    write(tmp_path, 2, readings(50, 50))
    assert [p.name for _, p in list_files(tmp_path, NAMING)] == [
        first.name, NAMING.name(2, T0 / 1e9 + 2)]
    assert report(str(tmp_path))["sensors"]["VIC"]["readings"] == 100  # type: ignore[index]


def test_the_writers_tail_reads_into_compressed_files(tmp_path: Path) -> None:
    """The newest rows at start may reach back into closed, compressed files."""
    compress(write(tmp_path, 1, readings(0, 400)), "gzip")
    compress(write(tmp_path, 2, readings(400, 400)), "zstd")
    write(tmp_path, 3, readings(800, 10))
    seqs = {int(row[3]) for row in tail_rows(tmp_path, NAMING, limit=1 << 20)}
    assert seqs == set(range(810))
    small = {int(row[3]) for row in tail_rows(tmp_path, NAMING, limit=20_000)}
    assert set(range(800, 810)) <= small and 0 not in small


def test_read_tail_of_a_compressed_file_starts_at_a_line(tmp_path: Path) -> None:
    packed = compress(write(tmp_path, 1, readings(0, 100)), "gzip")
    data, left = read_tail(packed, 1000)
    assert left <= 0 and data.count(b"\n") >= 1
    assert all(line.startswith(b"2026-") for line in data.splitlines())


def test_a_truncated_gzip_file_is_read_as_far_as_it_goes_and_said(tmp_path: Path) -> None:
    packed = compress(write(tmp_path, 1, readings(0, 2000)), "gzip")
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    result = CliRunner().invoke(main, ["report", "--json", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cannot read on" in result.output
    readings_read = json.loads(result.stdout)["sensors"]["VIC"]["readings"]
    assert 0 < readings_read < 2000
