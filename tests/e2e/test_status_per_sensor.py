"""Per-sensor gaps and lost in `powmon status`, from the writer's heartbeat (issue 22, item 5).

A real pipeline (broker, writer, two readers on simulated streaming boards); one board drops
stream frames, so the readings of those frames are lost for good (`device_dropped`), named to
the writer, which counts them per sensor. The status shows numbers for every sensor: the
losses where there are some, 0 where there are none (never "-" / null while the writer says).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Proc, python_module, wait_until, write_settings
from tests.pipeline import powmon_status

pytestmark = pytest.mark.e2e


def test_status_shows_gaps_and_lost_per_sensor_as_numbers(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """LOSSY drops every 10th stream frame, CLEAN drops none: `status --json` gives LOSSY a
    positive `lost` and CLEAN `lost` 0, `gaps` numbers for both, the per-sensor losses add up
    to the writer's total in the same heartbeat, and the table prints numbers, not '-'."""
    settings = write_settings(
        tmp_path / "settings.yaml",
        [{"PORT": "sim://LOSSY?amps=1&dropframe_every=10", "SENSORS_ID": "LOSSY"},
         {"PORT": "sim://CLEAN?amps=2", "SENSORS_ID": "CLEAN"}],
        POLLING_DELAY=0.01, STREAM="on",
    )
    cfg = ("--config", str(settings))
    spawn(python_module("powmon.broker", *cfg), "broker")
    spawn(python_module("powmon.writer", *cfg), "writer")
    for sensor in ("LOSSY", "CLEAN"):
        spawn(python_module("powmon.readers", "--sensor-id", sensor, *cfg), f"reader-{sensor}")

    def lossy() -> dict[str, Any] | None:
        result = powmon_status(settings, "--json")
        report: dict[str, Any] = json.loads(result.stdout)
        s = report["sensors"]
        lost = s["LOSSY"]["lost"]
        return report if result.returncode == 0 and lost and s["CLEAN"]["readings"] else None

    report = wait_until(lossy, timeout=60, interval=0.5, what="losses of LOSSY in status")
    assert report is not None
    sensors = report["sensors"]
    for sensor in ("LOSSY", "CLEAN"):
        assert type(sensors[sensor]["gaps"]) is int, sensors[sensor]
        assert type(sensors[sensor]["lost"]) is int, sensors[sensor]
    assert sensors["LOSSY"]["lost"] > 0
    # CLEAN loses nothing; its gaps may be 1: a hole at its start that a replay filled (the
    # reader's first readings can go out before the writer's subscription takes effect).
    assert sensors["CLEAN"]["lost"] == 0 and sensors["CLEAN"]["gaps"] in (0, 1)
    assert sensors["LOSSY"]["lost"] + sensors["CLEAN"]["lost"] == report["writer"]["lost"]

    table = powmon_status(settings).stdout
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("sensor "))
    clean = next(line for line in lines if line.startswith("CLEAN "))
    at = header.index("gaps")  # left-aligned columns: each cell starts under its header
    assert clean[at:].split()[:2] in (["0", "0"], ["1", "0"]), table
