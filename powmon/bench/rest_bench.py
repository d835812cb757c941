"""Figure 9: the pipeline at rest, and a reference loop for scaling the figures to a Pi 4.

At rest is the demo's load: `powmon run` with two sensors at 10 Hz, their boards simulated
on pseudo-terminals by a `powmon sim` process of their own (a board's CPU is not the
pipeline's), broker and writer; every process's share of a core over a long window, from
/proc/<pid>/task/*/schedstat (nanoseconds: a process at rest uses too little for 10 ms ticks).
A process at rest should cost nothing measurable: at most 0.15% of a core each, 0.5% in all.

The reference loop is the per-reading Python work of a reader and the writer (convert,
pack, decode, format the CSV line) for 100,000 readings, timed in a worker process: what
a Raspberry Pi 4 does slower by a factor this machine cannot measure, and the table says
which factor it assumes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Final

import yaml

from powmon.bench.procs import free_endpoint, pids_of, pty_boards, wait_for
from powmon.bench.results import Figure, cpu_seconds
from powmon.bench.runner import Plan, result, worker

BAUD: Final = 115200
SENSORS: Final = (("VIC", "amps=2.5,seed=1", {"VCC": 12.0}),
                  ("ATT", "amps=4,ac=50,seed=2", {"MODE": "ac", "MAINS_HZ": 50, "VCC": 230.0}))
EACH_PCT: Final = 0.15
TOTAL_PCT: Final = 0.5
# A Raspberry Pi 4 (Cortex-A72, 1.5 GHz) runs CPython's interpreter loop about 4x slower per
# core than a current x86-64 server core (an assumption from pyperformance-style comparisons,
# not measured here: no Pi is at hand); the figures scale by it.
PI4_FACTOR: Final = 4.0


def run(plan: Plan) -> list[Figure]:
    return [*rest_rows(plan), pi4_row(plan)]


def rest_rows(plan: Plan) -> list[Figure]:
    seconds = 3.0 if plan.quick else 20.0
    work = plan.sub("rest")
    links = work / "tty"
    settings = {
        "SENSORS": [{"PORT": str(links / sid), "SENSORS_ID": sid, **extra}
                    for sid, _, extra in SENSORS],
        "BUDRATE": BAUD, "TIMEOUT": 1, "POLLING_DELAY": 0.1, "LOG_LEVEL": 0,
        "LOCAL_DATA_ROOT": str(work / "data"), "LOCAL_DATA_FILE": "data.csv",
        "BROKER_FRONTEND": free_endpoint(), "BROKER_BACKEND": free_endpoint(),
    }
    path = work / "settings.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    with pty_boards(links, [f"{sid}:{opts}" for sid, opts, _ in SENSORS], BAUD):
        run = subprocess.Popen(
            [sys.executable, "-m", "powmon", "run", "--config", str(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            want = {"run", "broker", "writer", *(f"reader {sid}" for sid, _, _ in SENSORS)}
            pids = wait_for(lambda: (p := pids_of(path)).keys() >= want and p, 60,
                            "every process of powmon run")
            wait_for(lambda: any((work / "data").glob("data-*.csv")), 30, "rows on disk")
            time.sleep(3.0)  # start-up (imports, first flush) is not rest
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            start = time.monotonic()
            time.sleep(seconds)
            took = time.monotonic() - start
            share = {k: (cpu_seconds(p) - before[k]) / took * 100 for k, p in pids.items()}
        finally:
            run.terminate()
            run.wait(30)
    total = sum(share.values())
    parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(share.items()))
    rows = [Figure("9", "pipeline at rest, 2 sensors x 10 Hz on ptys", "% of a core", total,
                TOTAL_PCT, "target", f"<= {TOTAL_PCT}%", total <= TOTAL_PCT,
                note=f"{seconds:.0f} s window; {parts}")]
    rows += [Figure("9", f"  ... {k}", "% of a core", v, EACH_PCT, "target", f"<= {EACH_PCT}%",
                 v <= EACH_PCT) for k, v in sorted(share.items())]
    return rows


def pi4_row(plan: Plan) -> Figure:
    """The reference loop here, and what it would be on a Pi 4 at the assumed factor."""
    got = result(worker("refloop", "--readings", "20000" if plan.quick else "100000"))
    us = float(got["seconds"]) / int(got["readings"]) * 1e6
    return Figure("9", "reference loop: a reading's Python work", "us/reading", us,
               us * PI4_FACTOR, f"Pi 4 at {PI4_FACTOR:g}x (assumed)",
               note="convert + pack_row + batch decode + CSV line; multiply CPU figures by "
               f"{PI4_FACTOR:g} for a Pi 4 core")
