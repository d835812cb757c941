"""Figures 3 and 4: latency and cost of the live pipeline at 8 sensors x 100 Hz.

Eight readers poll `sim://` boards at POLLING_DELAY 0.01 and a ninth polls a pty-simulated
board at 115200 baud every 0.1 s (the "reader at 10 Hz" of figure 4, on a real tty as with a
real board). Latency is measured twice: by a tap subscriber in a process of its own (reading
timestamp -> decoded), and by tailing the CSV file here (reading timestamp -> seen in the file,
that is flushed by the writer). CPU seconds come from /proc/<pid>/stat of the children over
the same window; peak RSS is VmHWM.
"""

from __future__ import annotations

import calendar
import threading
import time
from pathlib import Path
from typing import Final

from powmon.bench.procs import BusWatch, Pipeline, cpu_window, wait_for
from powmon.bench.results import Row, cpu_seconds, peak_rss_mb, percentile
from powmon.bench.runner import Plan, result, worker
from powmon.sim.device import SignalSpec, SimDevice
from powmon.sim.pty import PtySimulator

SENSORS: Final = 8
FLUSH_INTERVAL: Final = 0.5  # the default
TAIL_POLL: Final = 0.001


class CsvTail:
    """Timestamps of rows as they appear in the writer's files: the disk side of latency."""

    def __init__(self, data: Path, since_ns: int) -> None:
        self._data = data
        self._since = since_ns
        self.latencies_ms: list[float] = []
        self._stop = threading.Event()
        self._offsets: dict[Path, int] = {}
        self._thread = threading.Thread(target=self._run, name="csvtail", daemon=True)
        self._prefix = ("", 0)

    def __enter__(self) -> CsvTail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(TAIL_POLL):
            for path in sorted(self._data.glob("*.csv")):
                self._read(path)

    def _read(self, path: Path) -> None:
        offset = self._offsets.get(path, 0)
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        seen = time.time_ns()
        end = chunk.rfind(b"\n") + 1
        self._offsets[path] = offset + end
        for line in chunk[:end].splitlines():
            if line.startswith(b"timestamp"):
                continue
            ts = self._ts_ns(line[:27].decode())
            if ts >= self._since:
                self.latencies_ms.append((seen - ts) / 1e6)

    def _ts_ns(self, text: str) -> int:
        head, secs = self._prefix
        if text[:19] != head:
            secs = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
            self._prefix = (text[:19], secs)
        return secs * 1_000_000_000 + int(text[20:26]) * 1000


def _sensors(r10_port: str) -> list[dict[str, object]]:
    sensors: list[dict[str, object]] = [
        {"PORT": f"sim://L{i}?amps=1&seed={i}", "SENSORS_ID": f"L{i}", "POLLING_DELAY": 0.01}
        for i in range(SENSORS)
    ]
    sensors.append({"PORT": r10_port, "SENSORS_ID": "R10", "POLLING_DELAY": 0.1})
    return sensors


def run(plan: Plan) -> list[Row]:
    seconds = 2.0 if plan.quick else 6.0
    device = SimDevice(SignalSpec(amps=1.0, seed=1), "R10")
    with PtySimulator(device, baud=115200) as sim:
        pipe = Pipeline(plan.sub("live"), _sensors(sim.path), FLUSH_INTERVAL=FLUSH_INTERVAL)
        with pipe, BusWatch(pipe.backend) as watch:
            pipe.broker()
            pipe.writer()
            wait_for(lambda: watch.get("writer", "writer"), 30, "the writer's heartbeat")
            for s in _sensors(sim.path):
                pipe.reader(str(s["SENSORS_ID"]))
            wait_for(lambda: len(watch.snapshot()) == SENSORS + 1, 60, "every reader")
            r10_pid = pipe.procs["reader R10"].pid
            r10 = (cpu_seconds(r10_pid), time.monotonic())  # a long window: /proc has 10 ms ticks
            time.sleep(0.5)
            tap = worker("latency", "--endpoint", pipe.backend, "--seconds", str(seconds),
                         "--warmup", "0.5")  # fmt: skip
            time.sleep(0.5)  # the tap's import and connect, inside its warmup
            cpu: dict[str, float] = {}
            pids = pipe.pids()
            before = watch.snapshot()
            with CsvTail(pipe.data, time.time_ns()) as tail, cpu_window(pids, cpu):
                time.sleep(seconds)
                after = watch.snapshot()
                time.sleep(FLUSH_INTERVAL + 0.3)  # the rows of the window reach the disk
            r10_share = (cpu_seconds(r10_pid) - r10[0]) / (time.monotonic() - r10[1]) * 100
            tap_ms = result(tap)["latencies_ms"]
            rss = {k: peak_rss_mb(p) for k, p in pids.items()}
    counts = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return _latency_rows(tap_ms, tail.latencies_ms) + _cost_rows(
        cpu, counts, rss, seconds, r10_share
    )


def _latency_rows(tap: list[float], disk: list[float]) -> list[Row]:
    limit = FLUSH_INTERVAL * 1000 + 10
    tap99, disk99 = percentile(tap, 99), percentile(disk, 99)
    return [
        Row("3", "tap latency p50", "ms", percentile(tap, 50), note=f"{len(tap)} readings"),
        Row("3", "tap latency p99", "ms", tap99, 5.0, "target", "< 5 ms", tap99 < 5.0),
        Row("3", "disk latency p50", "ms", percentile(disk, 50), note=f"{len(disk)} rows"),
        Row("3", "disk latency p99", "ms", disk99, limit, "FLUSH_INTERVAL+10ms",
            f"<= {limit:.0f} ms", bool(disk) and disk99 <= limit),
    ]  # fmt: skip


def _cost_rows(cpu: dict[str, float], counts: dict[str, int], rss: dict[str, float],
               seconds: float, r10: float) -> list[Row]:  # fmt: skip
    fast = [f"reader L{i}" for i in range(SENSORS)]
    fast_n = sum(counts.get(f"L{i}", 0) for i in range(SENSORS))
    total_n = sum(counts.values())
    per = 1000 / max(total_n, 1)
    whole = sum(cpu.values()) * per
    reader_rss = max(v for k, v in rss.items() if k.startswith("reader "))
    return [
        Row("4", "readers @100 Hz", "CPU s/1000",
            sum(cpu.get(k, 0.0) for k in fast) / max(fast_n, 1) * 1000),
        Row("4", "broker", "CPU s/1000", cpu.get("broker", 0.0) * per, note="8 x 100 Hz"),
        Row("4", "writer", "CPU s/1000", cpu.get("writer", 0.0) * per, note="8 x 100 Hz"),
        Row("4", "whole pipeline", "CPU s/1000", whole, 0.05, "target", "<= 0.05",
            whole <= 0.05, note=f"{total_n} readings in {seconds:.0f} s"),
        Row("4", "reader polling at 10 Hz", "% of a core", r10, 1.0, "target", "< 1%",
            r10 < 1.0, note="pty board at 115200 baud"),
        Row("4", "reader peak RSS", "MiB", reader_rss, 40.0, "target", "< 40 MiB",
            reader_rss < 40.0),
        Row("4", "broker peak RSS", "MiB", rss.get("broker", 0.0)),
        Row("4", "writer peak RSS", "MiB", rss.get("writer", 0.0)),
    ]  # fmt: skip
