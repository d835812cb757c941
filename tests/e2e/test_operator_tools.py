"""report, plot, calibrate, check-config and the live tap against a real `powmon run`.

One pipeline runs for the whole module on two simulated sensors: DC draws a known 2.5 A at
12 V with no noise (SNS chosen so the ADC counts convert back exactly: 30 W), CAL has no load,
a known zero offset of 2.47 V and noise. Part way through, DC's reader is frozen (SIGSTOP) for
HOLE_S: a hole in one session, as an unplug makes (3 s: six times the 0.5 s beyond which
base.energy bridges no pair at this polling period, so the hole is missing coverage). The
tests that need the pipeline running come first; the others read what it left once it is
stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from powmon.analysis.datafiles import data_files
from powmon.analysis.plot import build_plot, plot_columns
from powmon.base.text import parse_ts
from tests.helpers import (
    Proc,
    data_rows,
    on_terminal,
    pids_running,
    python_module,
    wait_until,
    write_settings,
)

pytestmark = pytest.mark.e2e

WATTS = 30.0  # 2.5 A x 12 V
OFFSET_V = 2.47
HOLE_S = 3.0


@dataclass
class Pipeline:
    settings: Path
    data: Path
    run: Proc
    stopped: bool = False

    def stop(self) -> None:
        if not self.stopped:
            assert self.run.stop(signal.SIGTERM) == 0
            self.stopped = True


def powmon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "powmon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dc_rows(data: Path) -> list[dict[str, str]]:
    return sorted(
        (r for r in data_rows(data) if r["sensor_id"] == "DC"),
        key=lambda r: (r["session"], int(r["seq"])),
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("tools")
    settings = write_settings(
        tmp / "settings.yaml",
        [
            {
                "PORT": "sim://DC?amps=2.5&sns=0.0625",
                "SENSORS_ID": "DC",
                "SNS": 0.0625,
                "VCC": 12.0,
                "POLLING_DELAY": 0.02,
                # The hole is made by pausing the reader: that stops readings only when it
                # polls (a streaming board goes on sampling; its frames come after the pause).
                "STREAM": "off",
            },
            {
                "PORT": f"sim://CAL?offset={OFFSET_V}&noise=0.1&seed=5",
                "SENSORS_ID": "CAL",
                "POLLING_DELAY": 0.02,
            },
        ],
        STALL_TIMEOUT=60,
    )
    run = Proc([sys.executable, "-m", "powmon", "run", "--config", str(settings)], tmp / "run.log")
    p = Pipeline(settings, tmp / "data", run)
    try:
        wait_until(
            lambda: {r["sensor_id"] for r in data_rows(p.data)} >= {"DC", "CAL"},
            timeout=30,
            what="rows of both sensors",
        )
        yield p
    finally:
        p.run.stop(signal.SIGTERM)


@pytest.fixture
def stopped(pipeline: Pipeline) -> Pipeline:
    """The pipeline after the hole was made and it was stopped cleanly."""
    if not pipeline.stopped:
        make_hole(pipeline)
        pipeline.stop()
    return pipeline


def make_hole(p: Pipeline) -> None:
    (reader,) = [
        pid
        for pid in pids_running(p.settings, "powmon.readers")
        if "DC" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace").split("\0")
    ]
    os.kill(reader, signal.SIGSTOP)
    try:
        before = len(dc_rows(p.data))
        # Not a synchronisation: the hole's length is what the tests measure.
        time.sleep(HOLE_S)
    finally:
        os.kill(reader, signal.SIGCONT)
    wait_until(lambda: len(dc_rows(p.data)) > before + 50, timeout=20, what="rows after the hole")


def offset_printed(output: str) -> float:
    match = re.search(r"^    OFFSET: (\S+)$", output, flags=re.M)
    assert match, output
    return float(match[1])


def spread_printed(output: str) -> float:
    match = re.search(r"^spread: +(\S+) V", output, flags=re.M)
    assert match, output
    return float(match[1])


def test_tap_on_a_terminal_shows_a_live_table(pipeline: Pipeline) -> None:
    """On a terminal the tap draws a table with a row per sensor, refreshed in place."""
    code, text = on_terminal(
        python_module("powmon", "tap", "--config", str(pipeline.settings), "--count", "60"),
        columns=120, lines=24, timeout=30,
    )
    assert code == 0, text
    assert "energy (Wh)" in text and "readings/s" in text
    assert re.search(r"│ DC +│ +2\.500 │ +30\.00 │", text), text
    assert "CAL" in text
    assert "\x1b[" in text  # redrawn in place with cursor movements, not JSON lines
    assert '"sensor_id"' not in text


def test_calibrate_takes_readings_from_the_bus_when_the_pipeline_runs(pipeline: Pipeline) -> None:
    """With the reader running, calibrate listens on the bus; the OFFSET is within the noise."""
    out = powmon(
        "calibrate", "--config", str(pipeline.settings), "--sensor", "CAL", "--readings", "200"
    )
    assert out.returncode == 0, out.stderr
    assert "the running pipeline (bus)" in out.stdout
    assert abs(offset_printed(out.stdout) - OFFSET_V) < spread_printed(out.stdout)


def test_check_config_sees_the_running_pipeline(pipeline: Pipeline) -> None:
    """Endpoints in use by PowMon and ports held by their readers are fine: exit 0."""
    out = powmon("check-config", "--config", str(pipeline.settings))
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"BROKER_BACKEND .* ok +in use by PowMon \(.*broker", out.stdout)
    assert re.search(r"DC +ok +in use by its PowMon reader", out.stdout)
    assert "all good" in out.stdout


def test_report_gives_the_energy_of_a_known_load_and_the_hole_as_coverage(
    stopped: Pipeline,
) -> None:
    """30 W over the CSV's own time span, less the HOLE_S hole, within 1%; the hole is missing
    coverage, not energy."""
    rows = dc_rows(stopped.data)
    assert {r["session"] for r in rows} == {rows[0]["session"]}  # the hole is inside a session
    ts = [_ts(r["timestamp"]) for r in rows]
    hole = max(b - a for a, b in itertools.pairwise(ts))
    assert hole >= HOLE_S
    span = ts[-1] - ts[0]
    out = powmon("report", str(stopped.data), "--sensor", "DC", "--json")
    assert out.returncode == 0, out.stderr
    dc = json.loads(out.stdout)["sensors"]["DC"]
    assert dc["energy_wh"] == pytest.approx(WATTS * (span - hole) / 3600, rel=0.01)
    assert dc["missing_s"] == pytest.approx(hole, rel=0.01)
    assert dc["coverage"] == pytest.approx((span - hole) / span, rel=0.01)
    assert dc["readings"] == len(rows)
    assert dc["mean_w"] == pytest.approx(WATTS) and dc["max_w"] == pytest.approx(WATTS)
    table = powmon("report", str(stopped.data))
    assert table.returncode == 0 and re.search(r"^DC +\S+ \S+ \.\. ", table.stdout, re.M)


def test_plot_draws_one_downsampled_series_per_sensor(stopped: Pipeline, tmp_path: Path) -> None:
    """The PNG has the asked size; each sensor's line holds four points per non-empty pixel
    column, its peak survives, and the hole is a break (NaN), not a joined line."""
    out = powmon("plot", str(stopped.data), "-o", str(tmp_path / "p.png"), "--size", "800x400")
    assert out.returncode == 0, out.stderr
    header = (tmp_path / "p.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (
        800,
        400,
    )

    fig = build_plot(data_files([stopped.data]), (), None, None, (800, 400))
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert set(lines) == {"DC", "CAL"}
    rows = data_rows(stopped.data)
    stamps = [parse_ts(r["timestamp"]) for r in rows]
    start, width, columns = min(stamps), max(stamps) - min(stamps), plot_columns(800)
    for sensor in ("DC", "CAL"):
        cols = {
            min(columns - 1, (t - start) * columns // width)
            for t, r in zip(stamps, rows, strict=True)
            if r["sensor_id"] == sensor
        }
        y = [float(v) for v in np.asarray(lines[sensor].get_ydata(), dtype=float)]
        breaks = sum(math.isnan(v) for v in y)
        assert len(y) == 4 * len(cols) + breaks
        assert max(v for v in y if not math.isnan(v)) == max(
            float(r["watts"]) for r in rows if r["sensor_id"] == sensor
        )
    assert int(np.isnan(np.asarray(lines["DC"].get_ydata(), dtype=float)).sum()) == 1  # the hole
    assert [ax.get_ylabel() for ax in fig.axes] == ["CAL (W)", "DC (W)"]  # a panel each


def test_calibrate_opens_the_port_when_the_pipeline_is_stopped(stopped: Pipeline) -> None:
    """No reader on the bus: calibrate reads the port itself; the OFFSET is within the noise."""
    out = powmon("calibrate", "--config", str(stopped.settings), "--sensor", "CAL")
    assert out.returncode == 0, out.stderr
    assert "from the port sim://CAL" in out.stdout
    assert abs(offset_printed(out.stdout) - OFFSET_V) < spread_printed(out.stdout)


def test_check_config_when_stopped_finds_ports_answering_and_endpoints_free(
    stopped: Pipeline,
) -> None:
    """Stopped: each port opens and answers, each endpoint can be bound: exit 0."""
    out = powmon("check-config", "--config", str(stopped.settings))
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"DC +ok +opened and answered \(read -> 544;", out.stdout)
    assert re.search(r"BROKER_FRONTEND .* ok +free", out.stdout)


def _ts(text: str) -> float:
    return parse_ts(text) / 1e9
