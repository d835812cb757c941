"""Under the real supervisord, a program that exits 2 (it cannot run as configured) is not
restarted, as under `powmon run`: bad settings must not become a restart loop."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Proc, wait_until, write_settings

pytestmark = pytest.mark.e2e
pytest.importorskip("supervisor", reason="the supervisor package is in the test extras")

PROGRAMS = ("powmon-broker", "powmon-writer", "powmon-reader-BAD")


def _status(conf: Path) -> dict[str, str]:
    """program -> state, as `supervisorctl status` prints them."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "status"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    states = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            states[fields[0].removeprefix("powmon:")] = fields[1]
    return states


def test_a_program_given_bad_settings_is_started_once_and_left_exited(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """The configuration is generated from good settings, then the settings file gets a typo:
    every program exits 2 at start, ends EXITED (not BACKOFF, not running again) and was
    spawned once, its log holding the one-line error once."""
    settings = write_settings(
        tmp_path / "settings.yaml", [{"PORT": "sim://BAD?amps=1", "SENSORS_ID": "BAD"}]
    )
    conf = tmp_path / "supervisord.conf"
    run_dir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "powmon", "deploy", "supervisord", "--config", str(settings),
         "--run-dir", str(run_dir), "--out", str(conf)],
        check=True, timeout=60,
    )
    run_dir.mkdir()
    settings.write_text(settings.read_text() + "NOT_A_KEY: 1\n", encoding="utf-8")
    daemon = spawn([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)], "sd")

    def all_exited() -> dict[str, str]:
        states = _status(conf)
        return states if all(states.get(p) == "EXITED" for p in PROGRAMS) else {}

    states = wait_until(all_exited, timeout=60, interval=0.2,
                        what="every program EXITED after its exit 2")
    assert set(states) == set(PROGRAMS), states
    log = (run_dir / "supervisord.log").read_text(encoding="utf-8")
    for program in PROGRAMS:
        spawned = re.findall(rf"spawned: '{program}' with pid", log)
        assert len(spawned) == 1, f"{program} started {len(spawned)} times:\n{log}"
        assert f"exited: {program} (exit status 2; expected)" in log, log
        own = (run_dir / f"{program}.log").read_text(encoding="utf-8")
        assert own.count("NOT_A_KEY") == 1, own
    assert daemon.stop() == 0
