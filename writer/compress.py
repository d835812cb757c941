"""COMPRESS: the writer's closed data files compressed beside themselves, off its hot path.

A data file is compressed only once it is closed (the store has rotated past it; at start,
every plain data file below the highest counter), one at a time, oldest first, to
`name.csv.gz` (gzip) or `name.csv.zst` (zstd, the `zstandard` package, `powmon[zstd]`).

Why a thread of the writer, not a child process: zlib and zstandard release the GIL while
they compress a chunk, so the thread costs the writer's loop next to nothing; it shares the
writer's stop and heartbeat counters without a pipe, and there is no second process to start,
supervise or leave behind. On Linux it lowers its own priority (nice +10, a thread is a task
there) so that on a busy core the loop that stores readings comes first.

The steps, each safe against a kill -9 at any instant (STEPS names them, for the tests that
stop a compression after each one):
  1. write `name.csv.gz` + TEMP_SUFFIX beside the original, chunk by chunk, and fsync it;
  2. rename it to `name.csv.gz`, fsync the folder;
  3. remove the original.
A kill leaves the original alone, or the original and a partial temp file, or the original and
the complete copy (renamed only after its fsync): never neither. `recover()`, at the next start,
removes the temp file, or the original that has its complete copy. Until then
base.storage.list_files reads the original, so no row is read twice. The copies are always
fsynced, whatever SYNC_WRITE says: the original is removed on the strength of them.

A failure (disk full) is logged and counted, the temp file removed, the original kept, and the
file tried again after a capped backoff; the files after it wait their turn. A stop (the
writer's SIGTERM) is seen at the next chunk: the temp file is removed and the original stays.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from io import FileIO
from pathlib import Path, PurePath
from typing import IO, Final, cast

from powmon.base.storage import (
    COMPRESSED_SUFFIX,
    TEMP_SUFFIX,
    FileNaming,
    compression_of,
    list_files,
)
from powmon.common.backoff import backoff

log = logging.getLogger(__name__)

STEPS: Final = ("chunk", "temp_synced", "renamed", "folder_synced", "original_removed")
CHUNK: Final = 1 << 20  # bytes read and compressed at a time: how soon a stop is seen
GZIP_LEVEL: Final = 6  # zlib's default: about 4x on data rows at tens of MB/s
ZSTD_LEVEL: Final = 3  # zstandard's default
NICE: Final = 10  # the compressing thread's priority below the writer's loop
STOP_WAIT: Final = 5.0  # seconds stop() waits for the thread (a chunk takes milliseconds)


class Stopped(Exception):
    """The compression was asked to stop (the writer is stopping); the original is kept."""


def _no_step(step: str) -> None:
    """The default step hook: the tests pass one that exits after a given step."""


def compressed_path(path: Path, kind: str) -> Path:
    """Where the compressed copy of a plain data file goes: beside it, its suffix added."""
    return path.with_name(path.name + COMPRESSED_SUFFIX[kind])


def fsync_folder(folder: Path) -> None:
    """Make a rename or removal in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        if sys.platform == "win32":
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encoder(kind: str, raw: FileIO, name: str, mtime: float) -> IO[bytes]:
    """A writer that compresses into `raw` and leaves it open when closed."""
    if kind == "gzip":
        return cast("IO[bytes]", gzip.GzipFile(filename=name, mode="wb", fileobj=raw,
                                               compresslevel=GZIP_LEVEL, mtime=int(mtime)))
    import zstandard  # noqa: PLC0415 -- an extra, needed only for COMPRESS zstd

    writer = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False)
    return cast("IO[bytes]", writer)


def compress_file(
    path: Path,
    kind: str,
    *,
    stop: threading.Event | None = None,
    step: Callable[[str], None] = _no_step,
    chunk: int = CHUNK,
) -> int:
    """Compress one closed data file beside itself (the module's steps); return the copy's
    size. Raises OSError (the temp file removed, the original kept; FileNotFoundError when the
    original went away meanwhile) or Stopped."""
    target = compressed_path(path, kind)
    temp = target.with_name(target.name + TEMP_SUFFIX)
    try:
        _write_copy(path, kind, temp, stop, step, chunk)
        step("temp_synced")
        _rename_copy(path, temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    step("renamed")
    fsync_folder(path.parent)
    step("folder_synced")
    path.unlink()
    step("original_removed")
    return target.stat().st_size


def _write_copy(path: Path, kind: str, temp: Path, stop: threading.Event | None,
                step: Callable[[str], None], chunk: int) -> None:
    """Step 1: the compressed copy in `temp`, fsynced (Stopped between chunks)."""
    with path.open("rb") as src, FileIO(temp, "wb") as raw:  # "wb": a stale temp is reused
        with _encoder(kind, raw, path.name, os.fstat(src.fileno()).st_mtime) as out:
            while data := src.read(chunk):
                if stop is not None and stop.is_set():
                    raise Stopped(path.name)
                out.write(data)
                step("chunk")
        os.fsync(raw.fileno())


def _rename_copy(path: Path, temp: Path, target: Path) -> None:
    """Step 2's rename, unless the original was removed meanwhile (retention): a file deleted
    is not brought back."""
    if not path.exists():
        raise FileNotFoundError(2, "removed while it was being compressed", str(path))
    os.replace(temp, target)


def recover(root: Path, naming: FileNaming) -> None:
    """At start, finish what a kill cut short: remove each partial copy (a temp file), and each
    original whose complete copy exists (the copy was renamed only after its fsync)."""
    try:
        names = [e.name for e in os.scandir(root) if e.is_file()]
    except FileNotFoundError:
        return
    for name in names:
        unfinished = PurePath(name[: -len(TEMP_SUFFIX)])
        if (name.endswith(TEMP_SUFFIX) and compression_of(unfinished) is not None
                and naming.counter_of(unfinished.name) is not None):
            (root / name).unlink(missing_ok=True)
            log.info("removed %s, a compressed copy cut short", name)
    present = set(names)
    doubled = [(name, name + suffix) for name in names for suffix in COMPRESSED_SUFFIX.values()
               if suffix and name + suffix in present and naming.counter_of(name) is not None]
    if doubled:
        fsync_folder(root)  # the copies' renames are on disk before any original goes
    for original, copy in doubled:
        (root / original).unlink(missing_ok=True)
        log.info("removed %s: its compressed copy %s is complete", original, copy)


def closed_files(root: Path, naming: FileNaming) -> list[Path]:
    """The plain data files below the highest counter, oldest first: every file the store
    will never append to again (it resumes only at the highest)."""
    files = list_files(root, naming)
    return [path for _, path in files[:-1] if compression_of(path) is None]


class Compressor:
    """Compresses one writer's closed data files, one at a time, in order, in a thread."""

    def __init__(self, root: Path, naming: FileNaming, kind: str, *,
                 retry_initial: float = 0.5, retry_max: float = 30.0) -> None:
        self._root = root
        self._naming = naming
        self._kind = kind
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._queue: deque[Path] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.files_compressed = 0
        self.compress_errors = 0
        self.bytes_before = 0
        self.bytes_after = 0

    def start(self) -> None:
        """Recover from a kill, queue every closed plain file, and start compressing (before
        the store opens a file: the highest counter now is the one it may append to)."""
        recover(self._root, self._naming)
        if self._kind == "zstd" and not _have_zstandard():
            log.error("COMPRESS zstd needs the zstandard package (pip install 'powmon[zstd]'): "
                      "closed data files are left uncompressed")
            self._kind = "none"
        if self._kind == "none" or self._thread is not None:
            return
        with self._cond:
            self._queue.extend(closed_files(self._root, self._naming))
        self._thread = threading.Thread(target=self._run, name="compress", daemon=True)
        self._thread.start()

    def closed(self, path: Path) -> None:
        """The store has closed `path` (rotated past it): compress it after those before it."""
        if self._kind == "none" or compression_of(path) is not None:
            return
        with self._cond:
            if path not in self._queue:
                self._queue.append(path)
                self._cond.notify()

    def stop(self) -> None:
        """Stop at the next chunk (the temp file removed, the original kept) and wait for it."""
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(STOP_WAIT)
            if self._thread.is_alive():
                log.warning("compression still running at stop; the next start cleans up")

    def counters(self) -> dict[str, object]:
        return {
            "files_compressed": self.files_compressed, "compress_errors": self.compress_errors,
            "compress_pending": len(self._queue), "compress_bytes_before": self.bytes_before,
            "compress_bytes_after": self.bytes_after,
        }

    def _run(self) -> None:
        _lower_priority()
        retry: Iterator[float] | None = None
        while (path := self._next()) is not None:
            if self._compress(path):
                retry = None
                with self._cond:
                    self._queue.popleft()
                continue
            retry = retry or backoff(self._retry_initial, self._retry_max)
            with self._cond:
                self._cond.wait_for(self._stop.is_set, next(retry))

    def _next(self) -> Path | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._stop.is_set())
            return None if self._stop.is_set() else self._queue[0]

    def _compress(self, path: Path) -> bool:
        """One file; False when it is to be tried again later."""
        try:
            before = path.stat().st_size
            after = compress_file(path, self._kind, stop=self._stop)
        except Stopped:
            log.info("compression of %s stopped; it stays uncompressed for now", path.name)
            return False
        except OSError as err:
            if not path.exists():
                log.info("%s went away before it was compressed", path.name)
                return True
            self.compress_errors += 1
            log.error("cannot compress %s: %s; the original is kept, tried again later",
                      path.name, err)
            return False
        self.files_compressed += 1
        self.bytes_before += before
        self.bytes_after += after
        log.info("compressed %s: %d -> %d bytes (%s)", path.name, before, after,
                 compressed_path(path, self._kind).name)
        return True


def _have_zstandard() -> bool:
    try:
        import zstandard  # noqa: F401, PLC0415 -- only whether the extra is installed
    except ImportError:
        return False
    return True


def _lower_priority() -> None:
    """Nice the calling thread alone (Linux: setpriority on a thread id); elsewhere leave it."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
