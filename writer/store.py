"""Buffered, rotating CSV storage: rows wait in memory and go to disk in one write per flush.

Rows are formatted by csv.writer into `pending` as they arrive; `flush()` decides, row by row,
which file each one goes to (so a file never exceeds FILE_SIZE_LIMIT unless a single row does,
and never ends in the middle of a row) and writes each file's share with one write call.
When the whole buffer fits in the current file, as it does in all but the flush that rotates,
it goes in one write without that row-by-row walk (which cost as much as formatting the rows).
A failed write leaves the rows it did not store in `pending` and cuts the file back to its last
complete row, so a retry neither loses nor doubles a row.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import logging
import os
import time
from collections.abc import Callable, Iterable
from io import FileIO
from pathlib import Path
from typing import Final

from powmon.base.storage import LINE_TERMINATOR, FileNaming, find_current, header_line, list_files
from powmon.writer.resume import resume_size

log = logging.getLogger(__name__)

_MAX_NAME_TRIES: Final = 100


class _Lines(list[str]):
    """The pending rows, one CSV line per item; csv.writer writes straight into it.

    csv.writer hands each row to write() as one string, so with `write = list.append` a whole
    batch is formatted by writerows() in C, one item per row, quoting and all.
    """

    write = list.append


def _write_all(handle: FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        count = handle.write(view)
        if not count:
            raise OSError(errno.EIO, "short write", handle.name)
        view = view[count:]


def _nbytes(line: str) -> int:
    return len(line) if line.isascii() else len(line.encode("utf-8"))


class CsvStore:
    """The data files of one writer; owns the open file handle and the rows not yet written."""

    def __init__(
        self,
        root: Path,
        naming: FileNaming,
        limit: int,
        *,
        fsync: bool,
        clock: Callable[[], float] = time.time,
        on_closed: Callable[[Path], None] | None = None,
    ) -> None:
        self._root = root
        self._naming = naming
        self._limit = limit
        self._fsync = fsync
        self._clock = clock
        self._on_closed = on_closed  # told of each file rotated past (writer.compress)
        self._header = header_line().encode("utf-8")
        self._pending = _Lines()
        self._csv = csv.writer(self._pending, lineterminator=LINE_TERMINATOR)
        self.pending_chars = 0
        self._file: FileIO | None = None
        self._path: Path | None = None
        self._counter = 0
        self._size = 0  # bytes of complete rows in the current file
        self.rows_written = 0
        self.files_opened = 0

    @property
    def pending_rows(self) -> int:
        return len(self._pending)

    @property
    def current_file(self) -> str:
        return self._path.name if self._path is not None else ""

    @property
    def bytes_in_file(self) -> int:
        return self._size

    def add_rows(self, rows: Iterable[Iterable[object]]) -> None:
        """Format rows (sequences of CSV_FIELDS values) into the pending buffer."""
        before = len(self._pending)
        self._csv.writerows(rows)
        self.pending_chars += sum(map(len, self._pending[before:]))

    def add_lines(self, lines: list[str]) -> None:
        """Rows already formatted as CSV lines (schema.csv_lines), each with its line end."""
        self._pending += lines
        self.pending_chars += sum(map(len, lines))

    def flush(self) -> int:
        """Write every pending row; return how many. Raises OSError with the rest still pending."""
        if not self._pending:
            return 0
        self._ensure_open()
        pending = self._pending
        data = "".join(pending).encode("utf-8")
        if self._size + len(data) <= self._limit:  # the usual case: no rotation in this flush
            self._write(data)  # raises OSError with every row still pending
            count = len(pending)
            self.rows_written += count
            pending.clear()
            self.pending_chars = 0
            return count
        start = 0
        try:
            while start < len(pending):
                end = self._fit(start)
                if end == start:
                    self._new_file()
                    continue
                self._write("".join(pending[start:end]).encode("utf-8"))
                self.rows_written += end - start
                start = end
        finally:
            del pending[:start]
            self.pending_chars = sum(map(len, pending)) if pending else 0
        return start

    def close(self) -> None:
        """Close the file; rows still pending are the caller's to report."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _fit(self, start: int) -> int:
        """The end of the run of pending rows, from `start`, that fits in the current file."""
        size = self._size
        limit = self._limit
        has_rows = size > len(self._header)
        pending = self._pending
        end = start
        while end < len(pending):
            size += _nbytes(pending[end])
            if size > limit and has_rows:
                break
            has_rows = True  # a row larger than a whole file still gets a file of its own
            end += 1
        return end

    def _ensure_open(self) -> None:
        if self._file is not None:
            return
        self._root.mkdir(parents=True, exist_ok=True)
        if self._path is None:
            self._open_from_directory()
        elif self._path.exists() and self._path.stat().st_size == self._size:
            self._file = FileIO(self._path, "ab")
        else:
            log.warning("file %s changed after a failed write; starting a new file",
                        self._path.name)
            self._new_file()

    def _open_from_directory(self) -> None:
        current = find_current(self._root, self._naming)
        if current is None:
            self._new_file()
            return
        self._counter, path = current
        size = resume_size(path, self._limit, self._header)
        if size is None:
            self._new_file(closed=path)  # full (or not ours): closed
            return
        self._path = path
        self._file = FileIO(path, "ab")
        self._size = size
        if size == 0:
            try:
                self._write(self._header)
            except OSError:
                self._path = None  # look again next time: the header is still to be written
                raise
        log.info("appending to %s (%d bytes)", path.name, self._size)

    def _new_file(self, closed: Path | None = None) -> None:
        """Start the next file with a header; a file that cannot get one is removed again.
        Once it has one, the file before it (`closed`, else the current one) is reported
        closed: nothing is appended to it again."""
        self.close()
        closed = self._path if closed is None else closed
        files = list_files(self._root, self._naming)
        counter = max(self._counter, files[-1][0] if files else 0)
        for _ in range(_MAX_NAME_TRIES):
            counter += 1
            path = self._root / self._naming.name(counter, self._clock())
            try:
                handle = FileIO(path, "xb")
            except FileExistsError:
                continue
            break
        else:
            raise OSError(errno.EEXIST, "no free data file name", str(self._root))
        self._counter, self._path, self._file, self._size = counter, path, handle, 0
        try:
            self._write(self._header)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
            self._path = None
            raise
        self.files_opened += 1
        log.info("new data file %s", path.name)
        if closed is not None and self._on_closed is not None:
            self._on_closed(closed)

    def _write(self, data: bytes) -> None:
        """Write all of `data` to the current file, or cut the file back to its last full row."""
        handle = self._file
        if handle is None:
            raise OSError(errno.EBADF, "no data file open")
        try:
            _write_all(handle, data)
            if self._fsync:
                os.fsync(handle.fileno())
        except OSError:
            self._abandon()
            raise
        self._size += len(data)

    def _abandon(self) -> None:
        self.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.truncate(self._path, self._size)
