"""writer.compress on real files: a compression killed after each of its steps (a child that
os._exit()s there) and a fresh start's recovery lose and double no row, read back through
base.storage; a stop is seen at the next chunk; a failure keeps the original and is retried."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from powmon.base.storage import (
    CSV_FIELDS,
    TEMP_SUFFIX,
    FileNaming,
    compression_of,
    list_files,
    open_text,
)
from powmon.writer.compress import (
    STEPS,
    Compressor,
    Stopped,
    compress_file,
    compressed_path,
    recover,
)
from powmon.writer.store import CsvStore
from tests.helpers import wait_until

NAMING = FileNaming.from_data_file("data.csv")
KINDS = ("gzip", "zstd")
# What a kill right after each step leaves of the closed file: original, temp copy, copy
LEFT = {
    "chunk": (True, True, False),
    "temp_synced": (True, True, False),
    "renamed": (True, False, True),
    "folder_synced": (True, False, True),
    "original_removed": (False, False, True),
}

# The compressor in a child that exits (no clean-up, as a kill -9) right after one step.
CHILD = """
import os, sys
from pathlib import Path
from powmon.writer.compress import compress_file
path, kind, stop_at = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def step(name):
    if name == stop_at:
        os._exit(0)
compress_file(path, kind, step=step, chunk=4096)
os._exit(3)  # the step was never reached
"""


def write_data(root: Path, counter: int, first: int, count: int) -> Path:
    """A data file of `count` rows, seqs first.., as the writer writes them."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / NAMING.name(counter, 1_795_628_536 + counter)
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(CSV_FIELDS)
        for seq in range(first, first + count):
            out.writerow(("2026-11-25T17:42:16.000000Z", "VIC", "s1", seq, 512, "0.00240",
                          "0.0370", "0.185", ""))
    return path


def stored_seqs(root: Path) -> list[int]:
    seqs: list[int] = []
    for _, path in list_files(root, NAMING):
        with open_text(path) as f:
            seqs += [int(r["seq"]) for r in csv.DictReader(f)]
    return seqs


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step", STEPS)
def test_a_kill_after_any_step_then_a_start_loses_and_doubles_no_row(
    tmp_path: Path, kind: str, step: str
) -> None:
    root = tmp_path / "data"
    first = write_data(root, 1, 0, 3000)  # ~150 KB: many 4 KB chunks
    write_data(root, 2, 3000, 10)  # the current file
    done = subprocess.run([sys.executable, "-c", CHILD, str(first), kind, step], check=False,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    copy = compressed_path(first, kind)
    temp = copy.with_name(copy.name + TEMP_SUFFIX)
    assert (first.exists(), temp.exists(), copy.exists()) == LEFT[step]
    assert stored_seqs(root) == list(range(3010)), "read before the recovery"

    recover(root, NAMING)
    assert not any(name.endswith(TEMP_SUFFIX) for name in (p.name for p in root.iterdir()))
    assert not (first.exists() and copy.exists())
    assert stored_seqs(root) == list(range(3010)), "read after the recovery"

    compressor = Compressor(root, NAMING, kind)  # the next start compresses what is left
    compressor.start()
    wait_until(lambda: not first.exists(), what="the closed file compressed")
    compressor.stop()
    assert [compression_of(p) for _, p in list_files(root, NAMING)] == [kind, None]
    assert stored_seqs(root) == list(range(3010))


def test_a_start_compresses_every_closed_file_in_order_but_not_the_current(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    paths = [write_data(root, n, 100 * (n - 1), 100) for n in (1, 2, 3)]
    (root / "data.csv").write_text("the original script's file\n", encoding="utf-8")
    sizes = sum(p.stat().st_size for p in paths)
    compressor = Compressor(root, NAMING, "gzip")
    compressor.start()
    wait_until(lambda: compressor.files_compressed == 2, what="two files compressed")
    compressor.closed(paths[2])  # the store rotated past the third
    wait_until(lambda: compressor.files_compressed == 3, what="the third compressed")
    compressor.stop()
    assert [p.name for _, p in list_files(root, NAMING)] == [
        compressed_path(p, "gzip").name for p in paths]
    assert (root / "data.csv").exists()
    counters = compressor.counters()
    assert counters["compress_errors"] == 0 and counters["compress_pending"] == 0
    assert counters["compress_bytes_before"] == sizes
    assert 0 < compressor.bytes_after < sizes
    assert stored_seqs(root) == list(range(300))


def test_a_stop_is_seen_at_the_next_chunk_and_leaves_the_original(tmp_path: Path) -> None:
    path = write_data(tmp_path, 1, 0, 1000)
    stop = threading.Event()
    seen: list[str] = []

    def step(name: str) -> None:
        seen.append(name)
        stop.set()  # the writer's SIGTERM, after the first chunk

    with pytest.raises(Stopped, match=path.name):
        compress_file(path, "gzip", stop=stop, step=step, chunk=4096)
    assert seen == ["chunk"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert stored_seqs(tmp_path) == list(range(1000))


def test_a_failure_keeps_the_original_counts_and_is_retried(tmp_path: Path) -> None:
    """The temp file's name taken by a folder: every try fails (the original kept, counted,
    logged) until it is gone; then the file is compressed."""
    root = tmp_path / "data"
    first = write_data(root, 1, 0, 100)
    write_data(root, 2, 100, 10)
    blocker = compressed_path(first, "gzip").with_name(
        compressed_path(first, "gzip").name + TEMP_SUFFIX)
    blocker.mkdir()
    compressor = Compressor(root, NAMING, "gzip", retry_initial=0.01, retry_max=0.05)
    compressor.start()
    wait_until(lambda: compressor.compress_errors >= 2, what="failed tries")
    assert first.exists() and not compressed_path(first, "gzip").exists()
    blocker.rmdir()
    wait_until(lambda: compressor.files_compressed == 1, what="the retry that works")
    compressor.stop()
    assert stored_seqs(root) == list(range(110))


def test_the_store_reports_each_file_it_closes_and_a_full_current_file_at_start(
    tmp_path: Path,
) -> None:
    """on_closed (the compressor's hook): each file rotated past, once it has a successor;
    at start, a current file that cannot be appended to (here not under our header)."""
    closed: list[Path] = []
    store = CsvStore(tmp_path, NAMING, 1024, fsync=False, on_closed=closed.append)
    for seq in range(40):  # ~50 bytes a row: two files and some
        store.add_rows([("2026-11-25T17:42:16.000000Z", "VIC", "s1", seq, 512, "0.00240",
                         "0.0370", "0.185", "")])
        store.flush()
    store.close()
    files = [p for _, p in list_files(tmp_path, NAMING)]
    assert len(files) >= 2
    assert closed == files[:-1]

    (tmp_path / NAMING.name(len(files) + 1, 1_795_628_536)).write_text("foreign,header\n")
    closed.clear()
    again = CsvStore(tmp_path, NAMING, 1024, fsync=False, on_closed=closed.append)
    again.add_rows([("2026-11-25T17:42:16.000000Z", "VIC", "s1", 40, 512, "0.00240",
                     "0.0370", "0.185", "")])
    again.flush()
    again.close()
    later = [p for _, p in list_files(tmp_path, NAMING)]
    assert closed == [later[-2]]
    assert stored_seqs(tmp_path) == list(range(41))
