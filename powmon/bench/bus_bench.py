"""Figure 2, bus throughput: synthetic readers -> real broker -> real writer -> CSV, zero loss.

The ceiling is plain pyzmq PUB/SUB between two processes on loopback, for the same message,
measured in the same run: once with the payload packed once (the bare sockets), once packing
and unpacking every message in Python (the least a Python pipeline must do). PowMon's figure
is counted into the CSV files, and every (sensor, seq) is checked there afterwards. Twice:
with one reading per message (a polling reader, a slow stream) and with batches of BATCH
readings (a streaming reader at 1 kHz: a frame of 10 samples per wake-up), each against the
raw rate of its own message, in readings per second.

HWM is set above the burst size for these runs (HWM below the burst would drop by design: XPUB
discards for a subscriber whose queue is full, PUB discards when its own queue is); the
figure is how fast the pipeline drains a burst with nothing lost.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Final

from powmon.bench.procs import (
    BusWatch,
    Pipeline,
    cpu_window,
    csv_seqs,
    free_endpoint,
    lost_readings,
    wait_for,
)
from powmon.bench.results import Figure, median
from powmon.bench.runner import Plan, result, worker

PUBLISHERS: Final = 2
TARGET_RATE: Final = 100_000
TARGET_SHARE: Final = 0.5
BATCH: Final = 10


def raw_rate(count: int, codec: bool, batch: int = 1) -> float:
    """Readings/s of `count` messages (of `batch` readings each) over raw PUB/SUB."""
    endpoint = free_endpoint()
    hwm = str(count + 1)
    extra = [*(["--codec"] if codec else []), "--batch", str(batch)]
    sub = worker("rawsub", "--endpoint", endpoint, "--count", str(count), "--hwm", hwm, *extra)
    pub = worker("rawpub", "--endpoint", endpoint, "--count", str(count), "--hwm", hwm, *extra)
    got = result(sub)
    sent = result(pub)
    if got["received"] != count:
        raise RuntimeError(f"raw PUB/SUB lost {count - got['received']} of {count}")
    return float(count * batch / (got["last"] - sent["start"]))


Runs = tuple[list[float], dict[str, float], int, int]


def pipeline_runs(plan: Plan, per_pub: int, runs: int, batch: int = 1) -> Runs:
    """Bursts through one broker and writer; rates, CPU per kind, readings, lost."""
    total = per_pub * PUBLISHERS
    pipe = Pipeline(plan.sub(f"bus-{batch}"), [{"PORT": "sim://unused", "SENSORS_ID": "unused"}],
                    HWM=total * 2, HEARTBEAT_INTERVAL=0.1)
    rates: list[float] = []
    cpu: dict[str, float] = {}
    expected: dict[str, int] = {}
    with pipe, BusWatch(pipe.backend, readings=False) as watch:
        pipe.broker()
        pipe.writer()
        wait_for(lambda: watch.get("writer", "writer"), 30, "the writer's heartbeat")
        with cpu_window(pipe.pids(), cpu):
            for run in range(runs):
                pubs = []
                for n in range(PUBLISHERS):
                    sensor = f"P{run}x{n}"
                    expected[sensor] = per_pub
                    pubs.append(worker("synpub", "--endpoint", pipe.frontend, "--sensor",
                                       sensor, "--count", str(per_pub), "--hwm",
                                       str(total * 2), "--batch", str(batch)))
                starts = [result(p)["start"] for p in pubs]
                want = total * (run + 1)
                wait_for(partial(_stored, watch, want), 120, "the writer to store the burst")
                rates.append(total / (time.time() - min(starts)))
    lost = lost_in_csv(pipe, expected)
    return rates, cpu, total * runs, lost


def _stored(watch: BusWatch, want: int) -> bool:
    return int(watch.counter("writer", "writer", "rows", 0)) >= want


def lost_in_csv(pipe: Pipeline, expected: dict[str, int]) -> int:
    return lost_readings(csv_seqs(pipe.data), expected)


def run(plan: Plan) -> list[Figure]:
    count = 20_000 if plan.quick else 400_000
    repeat = 1 if plan.quick else 3
    once = [raw_rate(count, codec=False) for _ in range(repeat)]
    codec = [raw_rate(count // 2, codec=True) for _ in range(repeat)]
    per_pub = 10_000 if plan.quick else 200_000
    rates, cpu, readings, lost = pipeline_runs(plan, per_pub, repeat)
    rate = median(rates)
    ceiling = median(codec)
    rows = [
        Figure("2", "raw PUB/SUB, packed once", "msgs/s", median(once), runs=once),
        Figure("2", "raw PUB/SUB, pack+unpack each", "msgs/s", ceiling, runs=codec),
        Figure("2", "readers->broker->writer->CSV", "readings/s", rate, TARGET_RATE, "target",
            ">= 100,000/s", rate >= TARGET_RATE, rates, note="one reading per message"),
        Figure("2", "  ... share of raw pack+unpack", "readings/s", rate, ceiling, "pack+unpack",
            ">= 0.50 x raw", rate >= TARGET_SHARE * ceiling),
        Figure("2", "  ... lost or doubled in CSV", "readings", lost, float(readings),
            "published", "0", lost == 0),
    ]
    for kind in ("writer", "broker"):
        rows.append(Figure("4", f"{kind} CPU at full throughput", "CPU s/1000",
                        cpu.get(kind, 0.0) / readings * 1000, note="bus burst"))
    return rows + batch_rows(plan, count, repeat, per_pub, ceiling)


def batch_rows(plan: Plan, count: int, repeat: int, per_pub: int, single: float) -> list[Figure]:
    """The same with batches of BATCH readings per message, against the raw rate of the batch
    message (and, for comparison, of single readings)."""
    codec = [raw_rate(count // (2 * BATCH), codec=True, batch=BATCH) for _ in range(repeat)]
    rates, cpu, readings, lost = pipeline_runs(plan, per_pub, repeat, BATCH)
    rate, ceiling = median(rates), median(codec)
    label = f"batches of {BATCH}"
    return [
        Figure("2", f"raw PUB/SUB pack+unpack, {label}", "readings/s", ceiling, runs=codec),
        Figure("2", f"readers->broker->writer->CSV, {label}", "readings/s", rate, ceiling,
            "pack+unpack", ">= 0.50 x raw", rate >= TARGET_SHARE * ceiling, rates,
            note=f"{rate / single:.2f} x raw single-reading messages"),
        Figure("2", f"  ... lost or doubled in CSV, {label}", "readings", lost, float(readings),
            "published", "0", lost == 0),
        Figure("4", f"writer CPU at full throughput, {label}", "CPU s/1000",
            cpu.get("writer", 0.0) / readings * 1000, note="bus burst"),
    ]
