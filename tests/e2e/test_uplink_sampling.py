"""A slow or dead remote server never slows sampling (the original fell to 1 reading/s)."""

from __future__ import annotations

import csv
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import Proc, wait_until, write_settings
from tests.httpserver import RecordingServer

pytestmark = pytest.mark.e2e
ROWS = 100  # 2 s at 50 Hz per run


def _rates(data: Path) -> dict[str, float]:
    """Readings per second per sensor, from the stored rows' own timestamps."""
    stamps: dict[str, list[float]] = {}
    for f in sorted(data.glob("*.csv")):
        with f.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                ts = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00")).timestamp()
                stamps.setdefault(row["sensor_id"], []).append(ts)
    return {s: (len(t) - 1) / (max(t) - min(t)) for s, t in stamps.items() if len(t) > 1}


def _count(data: Path) -> int:
    total = 0
    for f in data.glob("*.csv"):
        with f.open(encoding="utf-8") as handle:
            total += sum(1 for _ in handle) - 1
    return total


def _sample(tmp: Path, spawn: Callable[..., Proc], server: RecordingServer) -> dict[str, float]:
    tmp.mkdir()
    settings = write_settings(
        tmp / "settings.yaml",
        [{"PORT": "sim://RA?amps=2", "SENSORS_ID": "RA"},
         {"PORT": "sim://RB?amps=1", "SENSORS_ID": "RB"}],
        POLLING_DELAY=0.02, REMOTE_SAVE=True, UPLINK_URL=server.url, UPLINK_FORMAT="json",
        UPLINK_TIMEOUT=5, UPLINK_BATCH_WAIT=0.1,
    )  # fmt: skip
    run = spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], "run")
    wait_until(lambda: _count(tmp / "data") >= 2 * ROWS, timeout=60, what=f"{ROWS} rows/sensor")
    assert run.stop(signal.SIGTERM, timeout=60) == 0
    return _rates(tmp / "data")


def test_sampling_rate_is_the_same_with_a_healthy_hanging_or_refusing_server(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """Rates with a hanging and a refusing server are within noise of a healthy server's."""
    with RecordingServer() as server:
        healthy = _sample(tmp_path / "healthy", spawn, server)
        assert server.delivered(), "the healthy run must really have sent readings"
        server.hang()
        before = len(server.snapshot())
        hanging = _sample(tmp_path / "hanging", spawn, server)
        assert len(server.snapshot()) > before, "the uplink must have been stuck in a request"
        server.release()
        server.stop_listening()
        refusing = _sample(tmp_path / "refusing", spawn, server)
    for sensor, rate in healthy.items():
        assert rate > 10, f"{sensor}: the healthy run itself is too slow to compare ({rate:.1f}/s)"
        assert hanging[sensor] > 0.8 * rate, (sensor, healthy, hanging)
        assert refusing[sensor] > 0.8 * rate, (sensor, healthy, refusing)
