"""A real pipeline on simulated sensors, started process by process (no supervisor), and the
web process beside it: for the status, web and browser tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.helpers import Proc, free_tcp_port, python_module, wait_until, write_settings

SENSORS = ("VIC", "ATT")


@dataclass
class Pipeline:
    settings: Path
    broker: Proc
    writer: Proc
    readers: dict[str, Proc]

    @property
    def data(self) -> Path:
        return self.settings.parent / "data"


def start_pipeline(spawn: Callable[..., Proc], tmp_path: Path, sensors: Sequence[str] = SENSORS,
                   **overrides: Any) -> Pipeline:
    """Broker, writer and one reader per simulated sensor, from a fresh settings file."""
    entries = [{"PORT": f"sim://{s}?amps={2 + i}&noise=0.05", "SENSORS_ID": s}
               for i, s in enumerate(sensors)]
    settings = write_settings(tmp_path / "settings.yaml", entries,
                              **{"POLLING_DELAY": 0.05, **overrides})
    cfg = ("--config", str(settings))
    broker = spawn(python_module("powmon.broker", *cfg), "broker")
    writer = spawn(python_module("powmon.writer", *cfg), "writer")
    readers = {s: spawn(python_module("powmon.readers", "--sensor-id", s, *cfg), f"reader-{s}")
               for s in sensors}
    return Pipeline(settings, broker, writer, readers)


def powmon_status(settings: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "powmon", "status", "--config", str(settings), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


@dataclass
class Web:
    proc: Proc
    url: str

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kwargs)


def start_web(spawn: Callable[..., Proc], settings: Path, headers: dict[str, str] | None = None,
              ) -> Web:
    """`powmon web` on a free loopback port, once it answers."""
    port = free_tcp_port()
    proc = spawn(python_module("powmon.web", "--config", str(settings), "--listen",
                               f"127.0.0.1:{port}"), "web")
    web = Web(proc, f"http://127.0.0.1:{port}")

    def answers() -> bool:
        assert proc.popen.poll() is None, proc.output()
        try:
            return web.get("/api/status", headers=headers).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(answers, timeout=30, interval=0.1, what="powmon web answering")
    return web


def report_when(web: Web, ok: Callable[[dict[str, Any]], bool], what: str,
                timeout: float = 30) -> dict[str, Any]:
    """The web process's /api/status once `ok` holds for it."""

    def poll() -> dict[str, Any] | None:
        report: dict[str, Any] = web.get("/api/status").json()
        return report if ok(report) else None

    found = wait_until(poll, timeout=timeout, interval=0.2, what=what)
    assert found is not None
    return found
