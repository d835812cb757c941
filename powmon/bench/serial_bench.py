"""Figure 1, serial efficiency: the real reader against the same simulated link driven bare.

The simulated Arduino (powmon.sim.pty.PtySimulator) runs here, behind a real pseudo-terminal,
paced like a UART at the given baud rate; its `reads` counter is the one meter for every
contender, so the reader process, the bare pyserial loop and the pipelined prototype are
measured identically. The wire arithmetic (10 bits per byte, `read \\n` out, `512\\r\\n`
back) is the ceiling of one request/answer at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from powmon.bench.procs import Pipeline, wait_for
from powmon.bench.results import Figure, median
from powmon.bench.runner import Plan, result, worker
from powmon.sim.device import SignalSpec, SimDevice
from powmon.sim.pty import PtySimulator

REQUEST: Final = len(b"read \n")
ANSWER: Final = len(b"512\r\n")
BITS: Final = 10
TARGET: Final = 0.90
PIPELINE: Final = 4  # READ_PIPELINE's default


def wire_limit(baud: int) -> float:
    """Exchanges per second when each `read` waits for its answer: bits per exchange / baud."""
    return baud / ((REQUEST + ANSWER) * BITS)


def _windows(device: SimDevice, plan: Plan) -> list[float]:
    rates = []
    for _ in range(plan.windows):
        n0, t0 = device.reads, time.monotonic()
        time.sleep(plan.window_s)
        rates.append((device.reads - n0) / (time.monotonic() - t0))
    return rates


def _measure(
    baud: int | None, plan: Plan, start: Callable[[str], Callable[[], None]]
) -> list[float]:
    """Serve a fresh simulated board; `start(path)` starts the contender, returns its stopper."""
    device = SimDevice(SignalSpec(amps=1.0, seed=1), "B1")
    with PtySimulator(device, baud=baud) as sim:
        stopper = start(sim.path)
        try:
            wait_for(lambda: device.reads > 5, 30, "the first answers")
            time.sleep(0.3)  # past the handshake and the first wakeups
            return _windows(device, plan)
        finally:
            stopper()


def reader_rate(baud: int | None, plan: Plan, depth: int) -> list[float]:
    """The reader in request/answer mode, READ_PIPELINE `depth`, as fast as the link goes."""

    def start(path: str) -> Callable[[], None]:
        pipe = Pipeline(plan.sub(f"serial-{baud}-{depth}"), [{"PORT": path, "SENSORS_ID": "B1"}],
                        BUDRATE=baud or 115200, POLLING_DELAY=0.0, STREAM="off",
                        READ_PIPELINE=depth)
        pipe.broker()
        pipe.reader("B1")
        return pipe.stop

    return _measure(baud, plan, start)


def loop_rate(baud: int | None, plan: Plan, depth: int) -> tuple[list[float], int]:
    bad: list[int] = []

    def start(path: str) -> Callable[[], None]:
        args = ["--port", path, "--baud", str(baud or 115200), "--depth", str(depth)]
        proc = worker("serial", *args, "--seconds", "120")
        return lambda: bad.append(result(proc, stop=True)["bad"])

    rates = _measure(baud, plan, start)
    return rates, sum(bad)


def run(plan: Plan) -> list[Figure]:
    bauds: list[int | None] = [115200] if plan.quick else [115200, 9600, None]
    rows: list[Figure] = []
    for baud in bauds:
        label = f"{baud} baud" if baud else "unpaced pty"
        single = reader_rate(baud, plan, 1)
        bare, _ = loop_rate(baud, plan, 1)
        r, b = median(single), median(bare)
        relative = b > 0 and r / b >= TARGET
        rows.append(Figure("1", f"reader x1, {label}", "readings/s", r, b, "bare loop",
                        ">= 0.90 x bare" if baud else "", relative if baud else None,
                        single, note="READ_PIPELINE 1: one request in flight"))
        if baud:
            rows.append(Figure("1", f"wire rate, {label}", "readings/s", r, wire_limit(baud),
                            "bits/baud", note="one request/answer in flight"))
        piped, bad = loop_rate(baud, plan, PIPELINE)
        p = median(piped)
        rows.append(Figure("1", f"pipelined x{PIPELINE} loop, {label}", "readings/s", p, b,
                        "bare loop", runs=piped,
                        note=f"{bad} bad answers; {PIPELINE * REQUEST} request bytes in flight "
                        "of the 64-byte Arduino buffer"))
        reader = reader_rate(baud, plan, PIPELINE)
        rp = median(reader)
        rows.append(Figure("1", f"reader x{PIPELINE}, {label}", "readings/s", rp, p,
                        f"x{PIPELINE} loop", ">= 0.90 x loop" if baud else "",
                        rp >= TARGET * p if baud else None, reader,
                        note=f"READ_PIPELINE {PIPELINE} (the default): {rp / b:.2f} x the bare "
                        "loop"))
    return rows
