"""`powmon status` against a real running pipeline on simulated sensors (issue #11)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Proc, data_rows, wait_until, write_settings
from tests.pipeline import SENSORS, powmon_status, start_pipeline

pytestmark = pytest.mark.e2e


def test_status_is_up_then_a_stopped_writer_shows_as_down(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """With everything running: exit 0, a table naming each process and sensor, and --json with
    a `sensors` map. After the writer is stopped: exit 1 and the writer shown as down."""
    pipe = start_pipeline(spawn, tmp_path)
    wait_until(lambda: {r["sensor_id"] for r in data_rows(pipe.data)} >= set(SENSORS),
               timeout=30, what="rows of both sensors")

    def healthy() -> str | None:
        result = powmon_status(pipe.settings, "--json")
        return result.stdout if result.returncode == 0 else None

    stdout = wait_until(healthy, timeout=30, interval=0.5, what="status exit 0")
    assert stdout is not None
    report = json.loads(stdout)
    assert set(report["sensors"]) == set(SENSORS)
    for sensor in SENSORS:
        s = report["sensors"][sensor]
        assert s["rate"] > 0 and s["age_s"] < report["stall_timeout"], s
        assert s["bad_lines"] == 0
    assert report["processes"]["writer"]["pid"] == pipe.writer.pid
    assert report["writer"]["current_file"].startswith("data-")
    table = powmon_status(pipe.settings)
    assert table.returncode == 0, table.stdout
    assert table.stdout.startswith("pipeline UP")
    for name in ("broker", "writer", "reader/VIC", "reader/ATT"):
        assert name in table.stdout

    assert pipe.writer.stop(signal.SIGTERM) == 0
    down = powmon_status(pipe.settings)
    assert down.returncode == 1, down.stdout
    assert down.stdout.startswith("pipeline DOWN")
    assert "writer down: " in down.stdout
    writer = json.loads(powmon_status(pipe.settings, "--json").stdout)["processes"]["writer"]
    assert not writer["up"]


def test_status_with_nothing_running_is_down(tmp_path: Path) -> None:
    """No pipeline at all (the bus is not there): every process down, exit 1."""
    settings = write_settings(tmp_path / "s.yaml", [{"PORT": "sim://A", "SENSORS_ID": "A"}])
    result = powmon_status(settings, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert not report["ok"]
    assert "broker down: no heartbeat seen" in report["problems"]


def test_status_with_bad_settings_exits_2(tmp_path: Path) -> None:
    """A settings error is a usage error: exit 2 with the one-line message."""
    settings = tmp_path / "s.yaml"
    settings.write_text("SENSORS: []\n", encoding="utf-8")
    result = powmon_status(settings)
    assert result.returncode == 2
    assert "SENSORS: expected a non-empty list" in result.stderr
