"""Supervision that cannot split the pipeline or lose readings (issue #9), on real processes.

- kill -9 of `powmon run`: every child stops on its own (lifeline), flushing; a new run appends.
- A second `powmon run` or `powmon-writer` on the same data: exit 2 naming the holder.
- A frozen broker longer than STALL_TIMEOUT restarts nothing: liveness is out of band.

Outages are waits (that is the fault being simulated); everything else is synchronised on
outcomes with wait_until.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from powmon.common.settings import load_settings
from tests.helpers import (
    Proc,
    data_keys,
    data_streams,
    pids_running,
    published,
    published_by,
    python_module,
    wait_until,
    write_settings,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc"),
]

SENSORS = [
    {"PORT": "sim://SA?amps=1&noise=0.01", "SENSORS_ID": "SA"},
    {"PORT": "sim://SB?amps=2&noise=0.01", "SENSORS_ID": "SB"},
]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start_run(spawn: Callable[..., Proc], settings: Path, name: str = "run") -> Proc:
    return spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], name)


def test_kill_9_of_powmon_run_stops_every_child_and_a_new_run_appends(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """After kill -9 of the supervisor no child is left; every reading its readers published
    is on disk, each once; a new `powmon run` starts cleanly and appends to the same file."""
    settings = write_settings(tmp_path / "settings.yaml", SENSORS, POLLING_DELAY=0.02)
    data = tmp_path / "data"
    run = start_run(spawn, settings, "run1")
    wait_until(lambda: len(data_streams(data)) == 2, timeout=30, what="rows of both sensors")
    children = [p for p in pids_running(settings) if p != run.pid]
    assert len(children) == 4  # broker, writer, two readers
    os.kill(run.pid, signal.SIGKILL)
    wait_until(lambda: not any(alive(p) for p in children), timeout=20,
               what="every child of the killed supervisor gone")
    first = data_streams(data)
    for stream, seqs in first.items():
        assert sorted(seqs) == list(range(len(seqs))), f"{stream}: holes or doubles"
    by_sensor = {sensor: len(seqs) for (sensor, _), seqs in first.items()}
    assert by_sensor == published(run.output()), "every published reading was stored"
    files = sorted(data.glob("data-*.csv"))

    run2 = start_run(spawn, settings, "run2")
    wait_until(lambda: len(data_streams(data)) == 4, timeout=30, what="rows of two new sessions")
    assert run2.stop(signal.SIGTERM) == 0
    assert sorted(data.glob("data-*.csv")) == files, "the new run appended to the same file"
    assert Counter(data_keys(data)).most_common(1)[0][1] == 1, "a reading stored twice"


def test_a_second_run_or_writer_on_the_same_data_refuses_with_exit_2(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """A second `powmon run` and a second `powmon-writer` exit 2 with one line naming the pid
    and the folder; the first pipeline runs on undisturbed, no reading doubled."""
    settings = write_settings(tmp_path / "settings.yaml", SENSORS, POLLING_DELAY=0.02)
    data = tmp_path / "data"
    run = start_run(spawn, settings)
    wait_until(lambda: len(data_streams(data)) == 2, timeout=30, what="rows of both sensors")
    [writer] = pids_running(settings, "powmon.writer")
    for argv in ([sys.executable, "-m", "powmon", "run", "--config", str(settings)],
                 python_module("powmon.writer", "--config", str(settings))):
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 2, second.stderr
        assert f"already running: pid {writer}, data in {data}" in second.stderr
        assert "Traceback" not in second.stderr
    count = len(data_keys(data))
    wait_until(lambda: len(data_keys(data)) > count + 50, timeout=30, what="the first run going on")
    assert pids_running(settings, "powmon.writer") == [writer]
    assert run.stop(signal.SIGTERM) == 0
    assert "restarting" not in run.output()
    for stream, seqs in data_streams(data).items():
        assert sorted(seqs) == list(range(len(seqs))), f"{stream}: holes or doubles"


def test_a_frozen_broker_restarts_no_reader_and_loses_nothing(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """Broker SIGSTOPped for longer than STALL_TIMEOUT, then SIGCONT: the readers keep their
    sessions (nothing restarted), and every reading taken during the freeze reaches the CSV."""
    settings = write_settings(tmp_path / "settings.yaml", SENSORS, POLLING_DELAY=0.05,
                              STALL_TIMEOUT=2)
    data = tmp_path / "data"
    run = start_run(spawn, settings)
    wait_until(lambda: len(data_streams(data)) == 2, timeout=30, what="rows of both sensors")
    readers = sorted(pids_running(settings, "powmon.readers"))
    [broker] = pids_running(settings, "powmon.broker")
    os.kill(broker, signal.SIGSTOP)
    try:
        time.sleep(4.0)  # the freeze itself: twice STALL_TIMEOUT
    finally:
        os.kill(broker, signal.SIGCONT)
    before = {s: max(v) for s, v in data_streams(data).items()}
    wait_until(lambda: all(max(data_streams(data)[s]) > top + 40 for s, top in before.items()),
               timeout=30, what="readings flowing again after the freeze")
    assert sorted(pids_running(settings, "powmon.readers")) == readers
    assert run.stop(signal.SIGTERM) == 0
    assert "restarting" not in run.output(), "nothing had to be restarted"
    found = data_streams(data)
    assert len(found) == 2, "one session per sensor: no reader was restarted"
    taken = published_by(run, 2)
    for (sensor, _), seqs in found.items():
        assert sorted(seqs) == list(range(taken[sensor])), f"{sensor}: holes or doubles"


def test_a_taken_bus_endpoint_is_refused_once_by_the_broker_and_by_powmon_run(
    tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc]
) -> None:
    """With a broker already bound, a second broker exits 2 naming the endpoint, and
    `powmon run` refuses before starting anything (no crash loop)."""
    settings = write_settings(tmp_path / "settings.yaml", SENSORS)
    first = broker(settings)
    wait_until(lambda: "broker up" in first.output(), timeout=30, what="the first broker up")
    frontend = load_settings(settings).broker_frontend
    second = subprocess.run(python_module("powmon.broker", "--config", str(settings)),
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 2
    assert f"bus endpoint {frontend} is already in use" in second.stderr
    run = subprocess.run([sys.executable, "-m", "powmon", "run", "--config", str(settings)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert f"bus endpoint {frontend} is not free" in run.stderr
    assert "started" not in run.stderr
    assert first.popen.poll() is None, "the first broker runs on"


def test_a_reader_or_the_web_page_refusing_to_start_is_left_stopped_and_the_rest_runs(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """A reader whose PORT has an unknown sim option and a web page on a taken port both
    exit 2 at start: each is named, left stopped (not restarted in a loop, not stopping the
    pipeline), and the other reader's readings keep landing; SIGTERM then exits 0."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = write_settings(
            tmp_path / "settings.yaml",
            [SENSORS[0], {"PORT": "sim://BAD?bogus=1", "SENSORS_ID": "BAD"}],
            POLLING_DELAY=0.02, WEB_LISTEN=f"127.0.0.1:{port}",
        )
        data = tmp_path / "data"
        run = start_run(spawn, settings)
        refusals = ("reader BAD refused to start", "web refused to start")
        wait_until(lambda: all(r in run.output() for r in refusals), timeout=30,
                   what="both refusals named")
        count = len(data_keys(data))
        wait_until(lambda: len(data_keys(data)) > count + 20, timeout=30,
                   what="the other reader's readings going on")
        assert run.stop(signal.SIGTERM) == 0
    out = run.output()
    assert "SENSORS[BAD].PORT (or --port): cannot open serial port 'sim://BAD?bogus=1'" in out
    assert f"web cannot listen on 127.0.0.1:{port}" in out
    assert all(out.count(r) == 1 for r in refusals), "refused once, never restarted"
    assert {sensor for sensor, _ in data_streams(data)} == {"SA"}
