"""The operator's first hour, on the installed commands as real processes: a bad bus endpoint
stops `powmon check-config` and `powmon run` with exit 2 naming the key before anything
starts; check-config lists every mistake of a file at once; `powmon --help` cuts no command's
description and `powmon run --help` says what starts, where data goes, how to stop it and
what the exit codes mean."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_endpoint, write_settings

pytestmark = pytest.mark.e2e

VIC = [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}]
DEADLINE_S = 60.0


def powmon(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `powmon` with `args`, in its own session; if it outlives the deadline
    (a pipeline that started after all), its whole process group is stopped and the test
    fails."""
    script = Path(sys.executable).with_name("powmon")
    env = {k: v for k, v in os.environ.items() if k != "POWMON_SETTINGS"}
    with subprocess.Popen(
        [str(script), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"powmon {' '.join(args)} was still running after {DEADLINE_S:g} s:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _bad_endpoints() -> list[Any]:
    front, back = free_endpoint(), free_endpoint()
    return [
        pytest.param({"BROKER_FRONTEND": "tcp://127.0.0.1:99999"}, "BROKER_FRONTEND", id="99999"),
        pytest.param({"BROKER_BACKEND": "tcp://127.0.0.1:0"}, "BROKER_BACKEND", id="port-0"),
        pytest.param({"BROKER_FRONTEND": "tcp://127.0.0.1:abc"}, "BROKER_FRONTEND", id="abc"),
        pytest.param(
            {"BROKER_FRONTEND": front, "BROKER_BACKEND": front}, "BROKER_BACKEND", id="same"
        ),
        pytest.param(
            {"BROKER_BACKEND": back, "REPLAY_PORTS": int(back.rsplit(":", 1)[1])},
            "REPLAY_PORTS",
            id="replay-overlap",
        ),
    ]


@pytest.mark.parametrize(("overrides", "key"), _bad_endpoints())
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_bad_endpoint_exits_2_naming_the_key_before_anything_starts(
    tmp_path: Path, command: str, overrides: dict[str, Any], key: str
) -> None:
    """Port 99999 (libzmq took it modulo 65536), port 0 (an OS-chosen port nobody finds),
    'abc', frontend = backend, a replay range holding the backend's port: exit 2 with the
    key on stderr, and no data folder made (run makes it before starting the broker)."""
    path = write_settings(tmp_path / "settings.yaml", VIC, LOCAL_DATA_ROOT="data", **overrides)
    done = powmon(command, "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{key}: expected" in done.stderr
    assert "all good" not in done.stdout
    assert not (tmp_path / "data").exists()
    assert "powmon run:" not in done.stderr  # the start-up line, logged once settings pass


def test_check_config_lists_every_mistake_with_its_line(tmp_path: Path) -> None:
    """Five mistakes, one run: five lines FILE:LINE: KEY: ..., exit 2."""
    path = tmp_path / "settings.yaml"
    path.write_text(
        "SENSORS:\n"
        "  - {PORT: 'sim://VIC', SENSORS_ID: VIC, SPEED: 3}\n"
        "LOG_LEVEL: 9\n"
        "POLLING_DELAYY: 0.2\n"
        "BROKER_FRONTEND: tcp://127.0.0.1:0\n"
        "REMOTE_SAVE: maybe\n",
        encoding="utf-8",
    )
    done = powmon("check-config", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2
    wanted = [
        "2: SENSORS[0].SPEED: not a sensor setting",
        "3: LOG_LEVEL: expected an integer from 0 to 3",
        "4: POLLING_DELAYY: not a PowMon setting; did you mean POLLING_DELAY?",
        "5: BROKER_FRONTEND: expected a fixed port from 1 to 65535",
        "6: REMOTE_SAVE: expected true or false",
    ]
    errors = [line for line in done.stderr.splitlines() if line.startswith("powmon: error: ")]
    assert len(errors) == len(wanted), done.stderr
    for line, want in zip(errors, wanted, strict=True):
        assert line.startswith(f"powmon: error: {path}:{want}"), line


def test_powmon_help_cuts_no_description(tmp_path: Path) -> None:
    """Every command's line in `powmon --help` is whole: no '...' or '…' where click would
    cut a long first sentence."""
    done = powmon("--help", cwd=tmp_path)
    assert done.returncode == 0
    commands = done.stdout.split("Commands:", 1)[1]
    assert "check-config" in commands and "run" in commands
    assert "…" not in done.stdout
    assert "..." not in commands


def test_run_help_says_what_starts_where_data_goes_how_to_stop_and_exit_codes(
    tmp_path: Path,
) -> None:
    """What an operator needs before the first `powmon run`."""
    done = powmon("run", "--help", cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for needed in ("the broker", "the writer", "the uplink only when", "REMOTE_SAVE",
                   "MQTT_URL", "the web page only when WEB_LISTEN is set",
                   "one reader per sensor", "LOCAL_DATA_ROOT", "settings file's folder",
                   "Ctrl-C", "SIGTERM"):
        assert needed in text, needed
    assert re.search(r"Exit codes: 0 stopped cleanly .* 1 crashed .* 2 bad settings", text)
