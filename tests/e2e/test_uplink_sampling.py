"""A slow or dead remote server never holds back sampling (the original fell to 1 reading/s).

No rates are measured (speed lives in `powmon bench`); the test shows the cause instead: while
the uplink is provably stuck (a request hanging at the server, or every connection refused),
the readers go on taking readings and the writer stores every one of them, seq complete.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Proc, data_rows, wait_until, write_settings
from tests.httpserver import RecordingServer

pytestmark = pytest.mark.e2e
MORE = 100  # readings per sensor taken while the uplink is stuck


def _seqs(data: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for row in data_rows(data):
        out.setdefault(row["sensor_id"], []).append(int(row["seq"]))
    return out


def _start(tmp: Path, spawn: Callable[..., Proc], server: RecordingServer) -> Proc:
    tmp.mkdir()
    settings = write_settings(
        tmp / "settings.yaml",
        [{"PORT": "sim://RA?amps=2", "SENSORS_ID": "RA"},
         {"PORT": "sim://RB?amps=1", "SENSORS_ID": "RB"}],
        POLLING_DELAY=0.02, REMOTE_SAVE=True, UPLINK_URL=server.url, UPLINK_FORMAT="json",
        UPLINK_TIMEOUT=30, UPLINK_BATCH_WAIT=0.1,
    )
    return spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], "run")


def _goes_on(data: Path, stuck: Callable[[], bool]) -> None:
    """From now on, MORE readings per sensor are stored while `stuck()` stays true."""
    wait_until(lambda: len(_seqs(data)) == 2, timeout=60, what="rows of both sensors")
    start = {s: len(v) for s, v in _seqs(data).items()}
    wait_until(lambda: all(len(v) >= start[s] + MORE for s, v in _seqs(data).items()),
               timeout=60, what=f"{MORE} more readings per sensor")
    assert stuck(), "the uplink must still be stuck"
    for sensor, seqs in _seqs(data).items():
        assert sorted(seqs) == list(range(len(seqs))), f"{sensor}: holes or doubles"


def test_a_hanging_server_holds_back_nothing(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    """With the server's first request hanging (30 s timeout), sampling and storage go on."""
    with RecordingServer() as server:
        server.hang()
        run = _start(tmp_path / "hanging", spawn, server)
        wait_until(server.snapshot, timeout=60, what="a request hanging at the server")
        _goes_on(tmp_path / "hanging" / "data", lambda: not server.delivered())
        server.release()
        assert run.stop(signal.SIGTERM, timeout=60) == 0


def test_a_refusing_server_holds_back_nothing(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    """With every connection refused, sampling and storage go on; nothing reaches the server."""
    with RecordingServer() as server:
        server.stop_listening()
        run = _start(tmp_path / "refusing", spawn, server)
        _goes_on(tmp_path / "refusing" / "data", lambda: not server.snapshot())
        assert "Connection refused" in run.output(), "the uplink must have been refused"
        assert run.stop(signal.SIGTERM, timeout=60) == 0
