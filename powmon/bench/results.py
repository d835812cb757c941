"""Benchmark results: one Figure per figure, medians of several runs, the table and the JSON file.

Every figure is reported next to a reference measured in the same run on the same machine
(these machines are shared and noisy, so absolute numbers from another day mean little), and
the ratio between the two is what a target is checked against where the target is relative.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Figure:
    """One figure: PowMon's number, the reference it is compared with, and the verdict."""

    figure: str  # "1", "2", ... as in the issue
    name: str
    unit: str
    powmon: float
    reference: float | None = None
    ref_name: str = ""
    target: str = ""
    met: bool | None = None  # None: informational, no target
    runs: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None or not self.reference:
            return None
        return self.powmon / self.reference


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


# ---- process accounting (Linux /proc) ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's live threads so far, in seconds (0.0 once it is gone).

    /proc/<pid>/task/*/schedstat counts nanoseconds; utime + stime in /proc/<pid>/stat counts
    10 ms ticks, too coarse for a reader that uses 0.5% of a core. The ticks are the fallback.
    """
    try:
        return (
            sum(
                int((task / "schedstat").read_text().split()[0])
                for task in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    except (OSError, ValueError, IndexError):
        pass
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---- output -----------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def table(rows: Iterable[Figure]) -> str:
    """A plain-text table: figure, PowMon, reference, ratio, target, met."""
    head = ("#", "figure", "unit", "PowMon", "reference", "ratio", "target", "met")
    lines = [head]
    for r in rows:
        ratio = r.ratio
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        ref = f"{_num(r.reference)} {r.ref_name}".strip() if r.reference is not None else "-"
        lines.append((r.figure, r.name, r.unit, _num(r.powmon), ref,
                      "-" if ratio is None else f"{ratio:.2f}", r.target or "-", met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH, no shell
            capture_output=True, text=True, timeout=5, check=False,
        )
    except OSError:
        return ""
    return done.stdout.strip()


def save(rows: Sequence[Figure], out_dir: Path, quick: bool, seconds: float) -> Path:
    """Write benchmarks/results/<timestamp>.json so that commits can be compared."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out_dir / f"{stamp}{'-quick' if quick else ''}.json"
    doc: dict[str, Any] = {
        "created": stamp, "quick": quick, "seconds": round(seconds, 1),
        "commit": _git_commit(), "python": sys.version.split()[0],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path
