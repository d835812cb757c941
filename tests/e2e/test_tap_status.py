"""`powmon tap --status` shows heartbeats only, and --count counts what is shown; a tap that
hears nothing, or that the broker refuses, says so on stderr instead of waiting silently.

Real processes on loopback: the broker, writer and readers of tests/pipeline.py, a CURVE
broker with the keys of tests/keys.py, and `powmon tap` itself as a child whose stdout and
stderr are read apart.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from powmon.common.settings import load_settings
from tests.helpers import (
    Proc,
    free_endpoint,
    on_terminal,
    python_module,
    wait_until,
    write_settings,
)
from tests.keys import broker_host, lab_keys, other_host
from tests.pipeline import start_pipeline

pytestmark = pytest.mark.e2e


@dataclass
class Tap:
    """A `powmon tap` child, its stdout and stderr in files of their own."""

    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def start_tap(tmp_path: Path) -> Iterator[Callable[..., Tap]]:
    """Start `powmon tap ARGS`; at teardown SIGTERM it, wait with a deadline, then kill."""
    taps: list[Tap] = []

    def start(*args: str) -> Tap:
        n = len(taps)
        out, err = tmp_path / f"tap-{n}.out", tmp_path / f"tap-{n}.err"
        with out.open("wb") as o, err.open("wb") as e:
            popen = subprocess.Popen(python_module("powmon", "tap", *args), stdout=o, stderr=e,
                                     start_new_session=True)
        taps.append(Tap(popen, out, err))
        return taps[-1]

    yield start
    for tap in taps:
        if tap.popen.poll() is None:
            tap.popen.terminate()
            try:
                tap.popen.wait(15)
            except subprocess.TimeoutExpired:
                tap.popen.kill()
                tap.popen.wait(5)


def test_status_count_3_prints_exactly_three_heartbeats_and_no_reading(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """Against a running pipeline, `tap --status --count 3` piped prints three JSON lines, each
    a heartbeat, no reading among them, and exits 0."""
    pipeline = start_pipeline(spawn, tmp_path)
    done = subprocess.run(
        python_module("powmon", "tap", "--config", str(pipeline.settings), "--status",
                      "--count", "3"),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 3, done.stdout
    assert all("status" in r and "sensor_id" not in r for r in records), done.stdout
    assert {r["status"] for r in records} <= {"broker", "writer", "reader"}


def test_status_on_a_terminal_is_a_table_of_processes(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """On a terminal `tap --status` draws one row per process, redrawn in place, not JSON
    lines; --count 20 stops it after twenty heartbeats."""
    pipeline = start_pipeline(spawn, tmp_path)
    code, text = on_terminal(
        python_module("powmon", "tap", "--config", str(pipeline.settings), "--status",
                      "--count", "20"), columns=150, lines=30,
    )
    assert code == 0, text
    assert "PowMon heartbeats" in text and "last heartbeat" in text, text
    for process in ("broker", "writer", "reader"):
        assert f"│ {process} " in text, text
    assert "\x1b[" in text  # redrawn in place with cursor movements
    assert '"status"' not in text and '"sensor_id"' not in text


def test_a_tap_with_nothing_running_says_so_on_stderr_and_keeps_waiting(
    tmp_path: Path, start_tap: Callable[..., Tap]
) -> None:
    """Nothing listens on BROKER_BACKEND: after a few seconds the tap says on stderr that
    nothing was heard on that endpoint and to start the pipeline with `powmon run`, prints
    nothing on stdout, and is still running (then stops with exit 0 on SIGTERM)."""
    settings = write_settings(tmp_path / "settings.yaml", [{"PORT": "sim://X", "SENSORS_ID": "X"}])
    backend = load_settings(settings).broker_backend
    tap = start_tap("--config", str(settings))
    said = f"nothing heard on {backend}"
    wait_until(lambda: said in tap.stderr(), timeout=30, interval=0.1, what="the tap's word")
    assert "`powmon run`" in tap.stderr(), tap.stderr()
    assert tap.popen.poll() is None, "a tap keeps waiting"
    tap.popen.send_signal(signal.SIGTERM)
    assert tap.popen.wait(15) == 0, tap.stderr()
    assert tap.stdout() == ""


def test_a_tap_whose_key_the_broker_refuses_says_so_and_exits_1(
    tmp_path: Path, spawn: Callable[..., Proc], start_tap: Callable[..., Tap]
) -> None:
    """A CURVE broker that does not know this host's key: the tap's handshake is refused, and
    instead of waiting silently it says which key to authorise where, and exits 1."""
    lab = lab_keys(tmp_path)
    bus = {"BROKER_FRONTEND": free_endpoint(), "BROKER_BACKEND": free_endpoint()}
    broker_settings = write_settings(
        tmp_path / "lab.yaml", [{"PORT": "sim://LAB", "SENSORS_ID": "LAB"}], **bus,
        **broker_host(lab.broker[1], lab.authorized),
    )
    spawn(python_module("powmon.broker", "--config", str(broker_settings)), "broker")
    stranger = write_settings(tmp_path / "pi.yaml", [{"PORT": "sim://P", "SENSORS_ID": "P"}],
                              **bus, **other_host(lab.stranger[1], lab.broker[0]))
    tap = start_tap("--config", str(stranger), "--status")
    assert tap.popen.wait(30) == 1, tap.stderr()
    err = tap.stderr()
    assert f"{bus['BROKER_BACKEND']} refused this host's CURVE key" in err, err
    assert "CURVE_AUTHORIZED" in err, err
    assert "Traceback" not in err
    assert tap.stdout() == ""
