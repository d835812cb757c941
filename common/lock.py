"""One instance per data root, per spool: an exclusive OS lock held for the life of a process.

The writer locks `<LOCAL_DATA_ROOT>/writer.lock`, the uplink `<UPLINK_SPOOL>.lock`. The lock is
the operating system's (flock on POSIX, msvcrt.locking on Windows), so it is released by the OS
on any death of the holder, kill -9 included: there is never a stale pid file to clean up. The
holder writes its pid into the file only so that the refusal can name it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Final

from powmon.common.errors import InUseError

WRITER_LOCK: Final = "writer.lock"
_WIN_OFFSET: Final = 1 << 20  # Windows locks a byte range: lock one far past the pid text


class InstanceLock:
    """Held from `acquire()` until `release()` or the process ends."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # for the refusal: "data in /srv/powmon/data"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise InUseError naming the holder's pid and what it guards; a
        lock the OS cannot take at all (a read-only folder, NFS without locks) is exit 2 as
        well, naming the file, since restarting would meet it again."""
        fd = -1
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            taken = _try_lock(fd)
            if taken:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as err:
            if fd >= 0:
                os.close(fd)
            raise InUseError(f"cannot lock {self.path} ({self.what}): {err}") from err
        if not taken:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"pid {pid}" if pid else "another process"
            raise InUseError(f"already running: {who}, {self.what} (lock {self.path})")
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: Path) -> int | None:
    """The pid holding the lock at `path` (0 if unknown), or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd):
            return None  # free (and released again when fd closes)
        return _read_pid(fd)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).split()[0])
    return 0


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WIN_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def writer_lock(data_root: Path) -> InstanceLock:
    """The one-writer-per-data-root lock."""
    return InstanceLock(data_root / WRITER_LOCK, f"data in {data_root}")


def spool_lock(spool: Path) -> InstanceLock:
    """The one-uplink-per-spool lock."""
    return InstanceLock(spool.with_name(spool.name + ".lock"), f"spool {spool}")
