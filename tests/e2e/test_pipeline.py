"""The whole pipeline from the repository's settings.yaml, as a user starts it: `powmon run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Proc, data_rows, free_endpoint, pids_running, wait_until, write_settings

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _demo_settings(tmp_path: Path) -> Path:
    """The repo's settings.yaml, moved onto free loopback ports so tests never collide."""
    text = (REPO / "settings.yaml").read_text(encoding="utf-8")
    path = tmp_path / "settings.yaml"
    path.write_text(
        text
        + f"\nBROKER_FRONTEND: {free_endpoint()}\nBROKER_BACKEND: {free_endpoint()}\n"
        + "HEARTBEAT_INTERVAL: 0.2\nFLUSH_INTERVAL: 0.1\n",
        encoding="utf-8",
    )
    return path


def _run(spawn: Callable[..., Proc], settings: Path) -> Proc:
    cli = [sys.executable, "-m", "powmon", "run", "--config", str(settings)]
    return spawn(cli, "run")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process accounting reads /proc")
def test_powmon_run_writes_both_sensors_and_stops_cleanly(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """Rows for VIC and ATT appear within 10 s; after SIGTERM no process of it is left."""
    settings = _demo_settings(tmp_path)
    run = _run(spawn, settings)
    data = tmp_path / "data"

    def both_sensors() -> bool:
        return {r["sensor_id"] for r in data_rows(data)} >= {"VIC", "ATT"}

    wait_until(both_sensors, timeout=10, what="rows for both sensors")
    assert len(pids_running(settings)) >= 5  # run, broker, writer, 2 readers
    assert run.stop(signal.SIGTERM) == 0
    wait_until(lambda: not pids_running(settings), timeout=10, what="no process left")
    rows = data_rows(data)
    for sensor in ("VIC", "ATT"):
        seqs = sorted(int(r["seq"]) for r in rows if r["sensor_id"] == sensor)
        assert seqs == list(range(len(seqs))), f"{sensor}: seq must be 0..n-1, each once"
    vic = [r for r in rows if r["sensor_id"] == "VIC"]
    assert abs(sum(float(r["amps"]) for r in vic) / len(vic) - 2.5) < 0.3  # sim://VIC?amps=2.5


def test_tap_sees_what_the_writer_stores(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    """Readings printed by `powmon tap` are the very readings stored in CSV."""
    settings = _demo_settings(tmp_path)
    run = _run(spawn, settings)
    tap = subprocess.run(
        [sys.executable, "-m", "powmon", "tap", "--config", str(settings), "--sensor", "VIC",
         "--count", "20"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert tap.returncode == 0, tap.stderr  # what the tap said, if it failed
    tapped = [json.loads(line) for line in tap.stdout.splitlines()]
    assert len(tapped) == 20
    assert {t["sensor_id"] for t in tapped} == {"VIC"}
    assert run.stop(signal.SIGTERM) == 0
    stored = {(r["session"], int(r["seq"])): r for r in data_rows(tmp_path / "data")}
    for t in tapped:
        row = stored[(t["session"], t["seq"])]
        assert float(row["raw"]) == t["raw"]
        assert row["timestamp"] == t["timestamp"]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process accounting reads /proc")
def test_a_dead_child_is_restarted_and_a_silent_reader_is_restarted(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """kill -9 of the writer: restarted with backoff, and said so; a reader that is alive but
    produces no reading for STALL_TIMEOUT is treated as stalled and restarted."""
    settings = tmp_path / "settings.yaml"
    write_settings(
        settings,
        [{"PORT": "sim://OK1?amps=1", "SENSORS_ID": "OK1"},
         {"PORT": "sim://MUTE?silence_every=1", "SENSORS_ID": "MUTE"}],
        POLLING_DELAY=0.05, STALL_TIMEOUT=2,
    )
    run = _run(spawn, settings)
    data = tmp_path / "data"
    wait_until(lambda: any(r["sensor_id"] == "OK1" for r in data_rows(data)), timeout=20,
               what="first rows")
    (writer,) = pids_running(settings, "powmon.writer")
    os.kill(writer, signal.SIGKILL)
    wait_until(lambda: "writer exited with code -9; restarting in" in run.output(), timeout=10,
               what="the supervisor reporting the writer's death")
    wait_until(lambda: [p for p in pids_running(settings, "powmon.writer") if p != writer],
               timeout=20, what="a new writer")
    wait_until(lambda: "reader MUTE stalled: no reading for 2s; restarting" in run.output(),
               timeout=20, what="the silent reader restarted as stalled")
    count = len(data_rows(data))
    wait_until(lambda: len(data_rows(data)) > count, timeout=20, what="rows after the restarts")
    assert run.stop(signal.SIGTERM) == 0
    assert not any(r["sensor_id"] == "MUTE" for r in data_rows(data))
