"""What /files/ lists and serves: plain CSV files of the data folder, whole rows only."""

from __future__ import annotations

from pathlib import Path

from powmon.web.files import CHUNK, find_file, list_files, snapshot


def test_a_download_stops_after_the_last_complete_row(tmp_path: Path) -> None:
    """A row being written (no newline yet) is left out; a file larger than a chunk comes
    whole."""
    path = tmp_path / "data-000001-x.csv"
    path.write_bytes(b"h\n" + b"row\n" * (CHUNK // 2) + b"partial")
    assert b"".join(snapshot(path)) == b"h\n" + b"row\n" * (CHUNK // 2)


def test_a_row_cut_by_a_chunk_boundary_is_held_back_with_the_partial_tail(
    tmp_path: Path,
) -> None:
    """The partial row straddles the last chunk boundary (its start in the full first chunk):
    what is served still ends at the last complete row, and every piece sent ends a row."""
    path = tmp_path / "data-000001-x.csv"
    whole = b"h\n" + b"r" * (CHUNK - 10) + b"\n"
    path.write_bytes(whole + b"partial row straddling the chunk boundary")
    assert b"".join(snapshot(path)) == whole
    assert all(part.endswith(b"\n") for part in snapshot(path))


def test_only_plain_csv_files_of_the_folder_are_listed_and_found(tmp_path: Path) -> None:
    """Symlinks, other suffixes and folders are neither listed nor served; newest name first."""
    (tmp_path / "data-000001-a.csv").write_text("x\n", encoding="utf-8")
    (tmp_path / "data-000002-b.csv").write_text("y\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("z", encoding="utf-8")
    (tmp_path / "dir.csv").mkdir()
    outside = tmp_path.parent / "outside.csv"
    outside.write_text("secret\n", encoding="utf-8")
    (tmp_path / "link.csv").symlink_to(outside)
    assert [f.name for f in list_files(tmp_path)] == ["data-000002-b.csv", "data-000001-a.csv"]
    assert find_file(tmp_path, "link.csv") is None
    assert find_file(tmp_path, "../outside.csv") is None
    assert find_file(tmp_path, "data-000001-a.csv") == tmp_path / "data-000001-a.csv"
    assert list_files(tmp_path / "missing") == []
