"""Stream mode as users run it: `powmon run` with a reader on a real pty, a simulated board
paced at 115200 baud, the broker and the writer; what counts is what lands in the CSV files and
gaps.csv. The board's `streamed` list (samples in intact frames, with its own numbers and
clock) is what a correct pipeline stores.
"""

from __future__ import annotations

import itertools
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from powmon.base.text import parse_ts
from powmon.sim.device import Fault, SignalSpec, SimDevice
from powmon.sim.pty import PtySimulator
from tests.helpers import Proc, data_rows, lost_rows, wait_until, write_settings

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(sys.platform == "win32", reason="ptys")]

TOLERANCE_NS = 1_000_000


def _more_rows(data: Path, n: int) -> Callable[[], bool]:
    return lambda: len(data_rows(data)) >= n


def _rows(data: Path) -> list[dict[str, str]]:
    return sorted(data_rows(data), key=lambda r: int(r["seq"]))


def test_a_streamed_board_lands_in_csv_with_its_losses_named(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """100 Hz over a pty: every stored raw is a sample the board streamed, in order, seq
    complete and one session across a board reset; timestamps spaced by the board's clock; a
    corrupt and a lost frame are counted, never stored, and named in gaps.csv as
    device_dropped with their sample counts."""
    device = SimDevice(SignalSpec(amps=2.5, noise=0.05, seed=11, drift_ppm=-40), "PTY")
    with PtySimulator(device, baud=115200, link=tmp_path / "ttyPTY") as sim:
        settings = write_settings(
            tmp_path / "settings.yaml", [{"PORT": sim.path, "SENSORS_ID": "PTY"}],
            BUDRATE=115200, POLLING_DELAY=0.01, STREAM="on", FLUSH_INTERVAL=0.1,
            HEARTBEAT_INTERVAL=0.2,
        )
        data = tmp_path / "data"
        run = spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], "run")
        wait_until(lambda: len(data_rows(data)) >= 100, timeout=30, what="100 rows")
        for fault in (Fault.CORRUPT, Fault.DROPFRAME, Fault.RESET):
            stored = len(data_rows(data))
            device.inject(fault)
            wait_until(_more_rows(data, stored + 100), 30, what=f"100 rows after {fault.value}")
        assert run.stop(signal.SIGTERM) == 0
    rows = _rows(data)
    assert [float(r["raw"]) for r in rows] == [s.raw for s in device.streamed]
    assert [int(r["seq"]) for r in rows] == list(range(len(rows)))
    assert len({r["session"] for r in rows}) == 1
    assert {s.stream for s in device.streamed} == {1, 2}  # the reset: a second stream
    stamps = [parse_ts(r["timestamp"]) for r in rows]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    board = device.streamed
    errors = [
        (stamps[i] - stamps[i - 1]) - (board[i].device_us - board[i - 1].device_us) * 1000
        for i in range(1, len(rows))
        if board[i].stream == board[i - 1].stream
    ]
    assert sum(abs(e) <= TOLERANCE_NS for e in errors) >= 0.95 * len(errors)
    losses = lost_rows(data)
    assert [(g["count"], g["reason"]) for g in losses] == [("1", "device_dropped")] * 2
    for g in losses:  # an empty seq range just before the first reading after the hole
        assert int(g["last_seq"]) == int(g["first_seq"]) - 1
        after = device.streamed[int(g["first_seq"])]
        before = device.streamed[int(g["first_seq"]) - 1]
        assert after.seq - before.seq == 2
