"""A sensor whose serial port does not exist, under a real `powmon run` (issue 22, item 4).

The reader retries its port by itself (with its own backoff); it is alive, not stalled: its
heartbeat says why it has no readings, `powmon status` shows it, and the supervisor leaves it
alone: one reader process, one session, no restart, however many STALL_TIMEOUTs go by. (A
reader whose port is open but that takes no reading is still restarted: test_pipeline.py.)
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Proc, wait_until, write_settings
from tests.pipeline import powmon_status

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STALL_TIMEOUT = 2.0
OUTLIVE = 4  # the missing-port reader must outlive this many STALL_TIMEOUTs unrestarted


def _report(settings: Path) -> dict[str, Any]:
    result = powmon_status(settings, "--json")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_a_missing_port_is_reported_and_its_reader_is_not_restarted(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """PORT /dev/ttyNOPE0 beside a working sensor: `status --json` names the missing port for
    that sensor (`problem`, `waiting_for_port`), the text table too; its reader keeps one pid
    and one session past several STALL_TIMEOUTs, the supervisor counts no restart and never
    logs it as stalled; the other sensor reads on."""
    missing = "/dev/ttyNOPE0"
    assert not Path(missing).exists()
    settings = write_settings(
        tmp_path / "settings.yaml",
        [{"PORT": "sim://OK?amps=1&noise=0.01", "SENSORS_ID": "OK"},
         {"PORT": missing, "SENSORS_ID": "NOPE"}],
        POLLING_DELAY=0.05, HEARTBEAT_INTERVAL=0.25, STALL_TIMEOUT=STALL_TIMEOUT,
    )
    run = spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], "run")

    def waiting() -> dict[str, Any] | None:
        report = _report(settings)
        nope = report["sensors"]["NOPE"]
        return report if nope["waiting_for_port"] and nope["problem"] else None

    first = wait_until(waiting, timeout=30, interval=0.3, what="the missing port in status")
    assert first is not None
    nope = first["sensors"]["NOPE"]
    assert nope["problem"].startswith("port not found: '/dev/ttyNOPE0'"), nope
    assert nope["connected"] is False and nope["readings"] == 0
    assert any("sensor NOPE: no reading yet: port not found" in p for p in first["problems"])
    pid = first["processes"]["reader/NOPE"]["pid"]
    session = nope["session"]

    def outlived() -> dict[str, Any] | None:
        report = _report(settings)
        proc = report["processes"]["reader/NOPE"]
        assert proc["pid"] in (pid, None), f"reader restarted: {proc}\n{run.output()}"
        done = proc["uptime_exact"] and proc["uptime_s"] > OUTLIVE * STALL_TIMEOUT
        ok = report["sensors"]["OK"]["fresh"] and report["processes"]["supervisor/run"]["up"]
        return report if done and ok else None

    late = wait_until(outlived, timeout=60, interval=0.5,
                      what=f"the reader alive past {OUTLIVE} x STALL_TIMEOUT")
    assert late is not None
    assert late["processes"]["reader/NOPE"]["pid"] == pid
    assert late["processes"]["reader/NOPE"]["restarts"] == 0
    assert late["sensors"]["NOPE"]["session"] == session, "one session: never restarted"
    assert late["sensors"]["NOPE"]["waiting_for_port"] is True
    assert late["sensors"]["OK"]["readings"] > 0

    table = powmon_status(settings)
    assert f"NOPE: port not found: '{missing}'" in table.stdout, table.stdout
    assert "retrying" in table.stdout

    assert run.stop(signal.SIGTERM) == 0
    out = run.output()
    assert "stalled" not in out, out
    assert "reader NOPE exited" not in out and "restarting in" not in out, out
    assert "reader NOPE cannot open its port; it retries by itself and is left running" in out
