"""The generated supervisord.conf runs the pipeline under the real supervisord (PyPI supervisor)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Proc, wait_until, write_settings

pytestmark = pytest.mark.e2e
pytest.importorskip("supervisor", reason="the supervisor package is in the test extras")


def _ctl(conf: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
        capture_output=True, text=True, timeout=30, check=False,
    )
    return done.stdout.strip()


def _pid(conf: Path, program: str) -> int:
    out = _ctl(conf, "pid", program)
    return int(out) if out.isdigit() else 0


def _seqs(data: Path) -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for f in sorted(data.glob("*.csv")):
        with f.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                found.setdefault((row["sensor_id"], row["session"]), []).append(int(row["seq"]))
    return found


def test_kill_9_under_supervisord_is_restarted_and_data_stays_whole(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """supervisord restarts a kill -9'd writer; every seq of every session is stored once."""
    settings = write_settings(
        tmp_path / "settings.yaml",
        [
            {"PORT": "sim://SVA?amps=1.5&noise=0.01", "SENSORS_ID": "SVA"},
            {"PORT": "sim://SVB?amps=3&ac=50", "SENSORS_ID": "SVB"},
        ],
        POLLING_DELAY=0.02,
    )
    conf = tmp_path / "supervisord.conf"
    subprocess.run(
        [sys.executable, "-m", "powmon", "deploy", "supervisord", "--config", str(settings),
         "--run-dir", str(tmp_path / "run"), "--out", str(conf)],
        check=True, timeout=60,
    )
    (tmp_path / "run").mkdir()
    daemon = spawn([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)], "sd")
    data = tmp_path / "data"
    wait_until(lambda: {k[0] for k in _seqs(data)} >= {"SVA", "SVB"}, timeout=30,
               what="rows from both readers under supervisord")

    writer = wait_until(lambda: _pid(conf, "powmon:powmon-writer"), timeout=10, what="writer pid")
    os.kill(writer, signal.SIGKILL)
    wait_until(
        lambda: _pid(conf, "powmon:powmon-writer") not in (0, writer), timeout=30,
        what="supervisord restarted the writer",
    )
    before = sum(len(v) for v in _seqs(data).values())
    wait_until(lambda: sum(len(v) for v in _seqs(data).values()) > before + 20, timeout=30,
               what="rows keep coming after the restart")

    assert daemon.stop(signal.SIGTERM, timeout=60) == 0
    for (sensor, session), seqs in _seqs(data).items():
        assert sorted(seqs) == list(range(len(seqs))), f"{sensor}/{session}: holes or doubles"
    assert (
        not (data / "gaps.csv").exists() or len((data / "gaps.csv").read_text().splitlines()) <= 1
    )
