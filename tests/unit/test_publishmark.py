"""The publish mark: how far a reader's session got, readable after the reader is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from powmon.common import publishmark


def test_a_blank_mark_names_no_session(tmp_path: Path) -> None:
    path = tmp_path / "r.mark"
    publishmark.create(path)
    assert publishmark.read(path) is None


def test_the_last_write_is_what_is_read(tmp_path: Path) -> None:
    path = tmp_path / "r.mark"
    publishmark.create(path)
    mark = publishmark.MarkWriter(path)
    mark.write("abc123def456", 10)
    mark.write("abc123def456", 4711)
    assert publishmark.read(path) == ("abc123def456", 4711)
    mark.close()


def test_a_torn_copy_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "r.mark"
    publishmark.create(path)
    mark = publishmark.MarkWriter(path)
    mark.write("abc123def456", 99)
    mark.close()
    data = bytearray(path.read_bytes())
    data[6] ^= 0xFF  # a byte of the seq, as a kill in the middle of the copy would leave it
    path.write_bytes(bytes(data))
    assert publishmark.read(path) is None


def test_the_mark_survives_a_kill_9_of_its_writer(tmp_path: Path) -> None:
    """The point of it: a process killed -9 right after its write leaves the mark readable."""
    path = tmp_path / "r.mark"
    publishmark.create(path)
    code = (
        "import sys, pathlib; from powmon.common import publishmark\n"
        "m = publishmark.attach()\n"
        "m.write('s1', 123456789); print('written', flush=True); sys.stdin.read()\n"
    )
    env = {**os.environ, publishmark.ENV: str(path)}
    with subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "written"
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
    assert publishmark.read(path) == ("s1", 123456789)


def test_no_mark_without_a_supervisor(tmp_path: Path) -> None:
    assert publishmark.attach({}) is None
    assert publishmark.attach({publishmark.ENV: str(tmp_path / "missing")}) is None
