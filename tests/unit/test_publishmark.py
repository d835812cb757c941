"""The publish mark: how far a reader's session got, readable after the reader is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from powmon.common import publishmark
from powmon.common.schema.status import ReaderEnd
from powmon.common.settings import load_settings
from powmon.supervisor.run import RunConfig, Supervisor
from tests.helpers import write_settings


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


def test_a_new_mark_does_not_pull_the_page_from_under_an_old_reader(tmp_path: Path) -> None:
    """A reader of a run killed with -9 may still map its mark while the next run blanks it:
    the new mark is a new file, and the old mapping goes on working."""
    path = tmp_path / "r.mark"
    publishmark.create(path)
    old = publishmark.MarkWriter(path)
    old.write("0123456789ab", 5)
    publishmark.create(path)
    old.write("0123456789ab", 6)  # would be SIGBUS on a truncated file
    old.close()
    assert publishmark.read(path) is None


def test_the_next_run_reports_the_sessions_the_last_one_left(tmp_path: Path) -> None:
    """Marks live in LOCAL_DATA_ROOT/marks: a `powmon run` starting where another was killed
    (or where some sink missed its readers' last words) reports each configured reader's last
    session as ended, with how far it got, before any new reader starts."""
    settings = load_settings(write_settings(
        tmp_path / "settings.yaml",
        [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}, {"PORT": "sim://ATT", "SENSORS_ID": "ATT"}],
    ))
    config = RunConfig.from_settings(settings)
    assert config.marks == settings.data_root / "marks"
    config.marks.mkdir(parents=True)
    path = config.marks / f"reader-{b'VIC'.hex()}.mark"
    publishmark.create(path)
    mark = publishmark.MarkWriter(path)
    mark.write("feedc0ffee00", 1234)
    mark.close()
    supervisor = Supervisor(config)
    try:
        assert supervisor.gone and [end for _, end in supervisor.gone] == [
            ReaderEnd("VIC", "feedc0ffee00", 1234)
        ]
    finally:
        supervisor.lifelines.close()
