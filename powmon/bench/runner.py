"""Shared knobs of a benchmark run (quick or full) and starting the worker processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Plan:
    """How much of everything to do: `--quick` makes every figure small, never skips one."""

    quick: bool
    workdir: Path
    windows: int  # measurement windows per figure; the median is reported
    window_s: float

    @classmethod
    def make(cls, quick: bool, workdir: Path) -> Plan:
        if quick:
            return cls(quick, workdir, windows=1, window_s=0.8)
        return cls(quick, workdir, windows=3, window_s=1.5)

    def sub(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def worker(*args: str) -> subprocess.Popen[str]:
    """Start `python -m powmon.bench.workers ARGS`; collect its JSON with result()."""
    return subprocess.Popen(
        [sys.executable, "-m", "powmon.bench.workers", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def result(proc: subprocess.Popen[str], timeout: float = 120.0, stop: bool = False) -> Any:
    """The worker's JSON line; `stop` sends SIGTERM first (for open-ended workers)."""
    if stop and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"benchmark worker {proc.args!r} failed ({proc.returncode}): {err}")
    return json.loads(out.strip().splitlines()[-1])
