"""Figure 5, scale: how many simulated sensors at 10 Hz one host carries with nothing lost.

One reader process per sensor, each streaming from its own in-process `sim://` board (stream
mode, the default for a board that can), all into one broker and one writer. Readers are
added in steps (32, 64, 128, 256; fewer with --quick) to the running pipeline; a step holds
when every sensor delivered at least 95% of its 10 readings/s over the window and the watcher
saw no seq gap. At the end every reader is stopped and the CSV files must hold exactly the
readings each reader says (in its last heartbeat) it sent.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Final

from powmon.bench.procs import BusWatch, Pipeline, csv_seqs, lost_readings, wait_for
from powmon.bench.results import Figure
from powmon.bench.runner import Plan
from powmon.common.schema.status import STATE_STOPPED

RATE: Final = 10.0
SHARE: Final = 0.95
TARGET: Final = 256


def _sensor(n: int) -> dict[str, object]:
    return {"PORT": f"sim://K{n}?amps=1&seed={n}", "SENSORS_ID": f"K{n}"}


def _step_holds(watch: BusWatch, ids: list[str], seconds: float) -> tuple[bool, float]:
    before = watch.snapshot()
    gaps = sum(watch.gaps.values())
    time.sleep(seconds)
    after = watch.snapshot()
    rates = [(after.get(s, 0) - before.get(s, 0)) / seconds for s in ids]
    ok = min(rates) >= SHARE * RATE and sum(watch.gaps.values()) == gaps
    return ok, min(rates)


def _all_seen(watch: BusWatch, ids: list[str]) -> bool:
    return all(watch.counts.get(s) for s in ids)


def _state(watch: BusWatch, sensor: str) -> str:
    status = watch.get("reader", sensor)
    return "" if status is None else status.state


def run(plan: Plan) -> list[Figure]:
    steps = [4, 8] if plan.quick else [32, 64, 128, 256]
    seconds = 1.0 if plan.quick else 5.0
    sensors = [_sensor(n) for n in range(steps[-1])]
    pipe = Pipeline(plan.sub("scale"), sensors, POLLING_DELAY=1 / RATE, HEARTBEAT_INTERVAL=1.0)
    held, worst, started = 0, 0.0, 0
    with pipe, BusWatch(pipe.backend) as watch:
        pipe.broker()
        pipe.writer()
        wait_for(lambda: watch.get("writer", "writer"), 30, "the writer's heartbeat")
        for step in steps:
            for n in range(started, step):
                pipe.reader(f"K{n}")
            started = step
            ids = [f"K{n}" for n in range(step)]
            wait_for(partial(_all_seen, watch, ids), 120, f"{step} readers")
            time.sleep(1.0)
            ok, worst = _step_holds(watch, ids, seconds)
            if not ok:
                break
            held = step
        pipe.stop("reader ")
        ids = [f"K{n}" for n in range(started)]
        wait_for(lambda: all(_state(watch, s) == STATE_STOPPED for s in ids), 30,
                 "the readers' last heartbeats")
        sent = {f"K{n}": int(watch.counter("reader", f"K{n}", "seq", 0)) for n in range(started)}
        pipe.stop()
    lost = lost_readings(csv_seqs(pipe.data), sent)
    return [
        Figure("5", "sensors at 10 Hz, zero loss", "sensors", held, TARGET, "target", ">= 256",
            None if plan.quick else held >= TARGET and lost == 0,
            note=f"tried {started}; slowest sensor in the last step {worst:.1f}/s; "
            f"{lost} lost in CSV"),
    ]
