"""One instance per data root: the OS lock is exclusive, names its holder, and dies with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from powmon.common.errors import InUseError
from powmon.common.lock import holder, writer_lock


def test_a_second_lock_on_the_same_folder_names_the_holder(tmp_path: Path) -> None:
    """The first holds; the second is refused with the pid and the folder; then it is free."""
    first = writer_lock(tmp_path)
    first.acquire()
    try:
        assert holder(first.path) == os.getpid()
        with pytest.raises(InUseError, match=rf"already running: pid {os.getpid()}, data in "):
            writer_lock(tmp_path).acquire()
    finally:
        first.release()
    assert holder(first.path) is None
    with writer_lock(tmp_path):
        pass


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    """kill -9 of the holder leaves its pid in the file but no lock: no stale lock to clean."""
    code = (
        "import sys, time; from pathlib import Path; from powmon.common.lock import writer_lock;"
        "writer_lock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        assert holder(tmp_path / "writer.lock") == child.pid
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert holder(tmp_path / "writer.lock") is None
    with writer_lock(tmp_path):
        assert holder(tmp_path / "writer.lock") == os.getpid()


def test_a_lock_that_cannot_be_made_is_an_in_use_error_naming_the_file(tmp_path: Path) -> None:
    """LOCAL_DATA_ROOT under a plain file: not a traceback (exit 1, restarted for ever) but
    InUseError (exit 2) naming the lock file and the folder it guards."""
    (tmp_path / "file").write_text("", encoding="utf-8")
    root = tmp_path / "file" / "data"
    with pytest.raises(InUseError, match=rf"cannot lock {root / 'writer.lock'} \(data in {root}\)"):
        writer_lock(root).acquire()
