"""Figure 7, stream throughput per port: a real reader streaming from a board on a pty as fast
as the wire carries, next to the wire's capacity for the frames the board sends.

The simulated board runs here (powmon.sim.pty.PtySimulator) paced like a UART at the baud rate
(10 bits per byte), with an ADC budget high enough that the wire is the only limit; the reader
asks for `stream 65535` and gets the board's limit (95% of the wire in 16-sample frames). The
reference is the wire arithmetic: (baud / 10) bytes/s divided by the bytes per sample of a
16-sample frame (42 / 16). Readings are counted from the reader's own heartbeats, the loss from
its device_lost counter, and the writer must store them all.
"""

from __future__ import annotations

import time
from typing import Final

from powmon.bench.procs import BusWatch, Pipeline, wait_for
from powmon.bench.results import Figure, median
from powmon.bench.runner import Plan
from powmon.sim.device import SignalSpec, SimDevice
from powmon.sim.pty import PtySimulator
from powmon.sim.stream import MAX_PER_FRAME, line_baud

BAUDS: Final = (115200, 1_000_000)
TARGET: Final = 0.90
ADC_RATE: Final = 1_000_000  # conversions/s the simulated board may use: never the limit
BITS: Final = 10


def wire_capacity(baud: int, per_frame: int = MAX_PER_FRAME) -> float:
    """Samples/s the wire carries in frames of `per_frame` samples (10 + 2N bytes each)."""
    return line_baud(baud) / BITS * per_frame / (10 + 2 * per_frame)


def _progress(watch: BusWatch) -> tuple[int, int, int]:
    """The reader's last heartbeat: its readings, device_lost and its own time (ns)."""
    status = watch.get("reader", "S1")
    if status is None:
        return 0, 0, 0
    c = status.counters
    return int(c.get("readings", 0)), int(c.get("device_lost", 0)), status.ts_ns


def _windows(watch: BusWatch, plan: Plan) -> tuple[list[float], int]:
    """Readings/s over each window, by the reader's heartbeats (counts and their own times);
    samples lost meanwhile."""
    rates: list[float] = []
    lost0 = _progress(watch)[1]
    for _ in range(plan.windows):
        n0, _, t0 = _progress(watch)
        time.sleep(plan.window_s * 2)
        n1, _, t1 = _progress(watch)
        rates.append((n1 - n0) / max((t1 - t0) / 1e9, 1e-9))
    return rates, _progress(watch)[1] - lost0


def stream_rate(baud: int, plan: Plan) -> tuple[list[float], int, int, bool]:
    """Rates, samples lost, the rate the board granted, and whether the writer kept up."""
    device = SimDevice(SignalSpec(amps=1.0, seed=1, adc_rate=ADC_RATE), "S1")
    with PtySimulator(device, baud=baud) as sim:
        pipe = Pipeline(plan.sub(f"stream-{baud}"), [{"PORT": sim.path, "SENSORS_ID": "S1"}],
                        BUDRATE=baud, POLLING_DELAY=0.0, STREAM="on",
                        HEARTBEAT_INTERVAL=0.1)
        with pipe, BusWatch(pipe.backend, readings=False) as watch:
            pipe.broker()
            pipe.writer()
            wait_for(lambda: watch.get("writer", "writer"), 30, "the writer's heartbeat")
            pipe.reader("S1")
            wait_for(lambda: _progress(watch)[0] > 1000, 30, "the stream's first readings")
            time.sleep(0.5)
            rates, lost = _windows(watch, plan)
            hz = int(watch.counter("reader", "S1", "stream_hz", 0))
            total = _progress(watch)[0]
            kept_up = wait_for_rows(watch, total)
    return rates, lost, hz, kept_up


def wait_for_rows(watch: BusWatch, total: int) -> bool:
    try:
        wait_for(lambda: int(watch.counter("writer", "writer", "rows", 0)) >= total, 30,
                 "the writer to store the stream")
    except TimeoutError:
        return False
    return True


def run(plan: Plan) -> list[Figure]:
    rows: list[Figure] = []
    for baud in BAUDS[:1] if plan.quick else BAUDS:
        rates, lost, hz, kept_up = stream_rate(baud, plan)
        rate, capacity = median(rates), wire_capacity(baud)
        rows.append(Figure("7", f"stream, {baud:,} baud", "readings/s", rate, capacity,
                        "wire, 16-sample frames", ">= 0.90 x wire",
                        rate >= TARGET * capacity and lost == 0 and kept_up, rates,
                        note=f"board granted {hz} Hz (95% of the wire); {lost} samples lost; "
                        f"writer {'kept up' if kept_up else 'fell behind'}"))
    return rows
