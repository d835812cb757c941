"""Figures 3 and 4: latency and cost of the live pipeline at 8 sensors x 100 Hz, per mode.

Eight readers read boards at 100 Hz and a ninth at 10 Hz (the "reader at 10 Hz" of figure 4),
all simulated on real pseudo-terminals at 115200 baud by a `powmon sim` process of their own
(a board's work is not the pipeline's, and a real tty is what a real board gives). The run
is made twice: in stream mode (the board samples and sends frames) and in request/answer
mode (a `read` per reading). Latency is measured twice: by a tap subscriber in a process of
its own (reading timestamp -> decoded), and by tailing the CSV file here (reading timestamp
-> seen in the file, that is flushed by the writer). CPU seconds come from /proc of the
readers, the broker and the writer over the same window; peak RSS is VmHWM.
"""

from __future__ import annotations

import calendar
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from powmon.bench.procs import BusWatch, Pipeline, cpu_window, wait_for
from powmon.bench.results import Row, cpu_seconds, peak_rss_mb, percentile
from powmon.bench.runner import Plan, result, worker

SENSORS: Final = 8
FLUSH_INTERVAL: Final = 0.5  # the default
TAIL_POLL: Final = 0.001
BAUD: Final = 115200
# Whole-pipeline CPU per 1,000 readings at 8 x 100 Hz: the targets per mode.
CPU_TARGETS: Final = {"stream": 0.05, "poll": 0.15}


class CsvTail:
    """Timestamps of rows as they appear in the writer's files: the disk side of latency, and
    the count of readings taken in a window (by their own timestamps: exact, whatever the
    heartbeats' timing)."""

    def __init__(self, data: Path, since_ns: int) -> None:
        self._data = data
        self._since = since_ns
        self.latencies_ms: list[float] = []
        self.stamps: list[tuple[str, int]] = []  # (sensor_id, ts_ns) of every row seen
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
            for path in sorted(self._data.glob("data-*.csv")):
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
            self.stamps.append((line[28:].split(b",", 1)[0].decode(), ts))
            if ts >= self._since:
                self.latencies_ms.append((seen - ts) / 1e6)

    def counts(self, start_ns: int, end_ns: int) -> dict[str, int]:
        """Rows per sensor whose reading was taken in [start_ns, end_ns)."""
        counts: dict[str, int] = {}
        for sensor, ts in self.stamps:
            if start_ns <= ts < end_ns:
                counts[sensor] = counts.get(sensor, 0) + 1
        return counts

    def _ts_ns(self, text: str) -> int:
        head, secs = self._prefix
        if text[:19] != head:
            secs = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
            self._prefix = (text[:19], secs)
        return secs * 1_000_000_000 + int(text[20:26]) * 1000


def _sensors(links: Path, period: float = 0.01) -> list[dict[str, object]]:
    sensors: list[dict[str, object]] = [
        {"PORT": str(links / f"L{i}"), "SENSORS_ID": f"L{i}", "POLLING_DELAY": period}
        for i in range(SENSORS)
    ]
    sensors.append({"PORT": str(links / "R10"), "SENSORS_ID": "R10", "POLLING_DELAY": 0.1})
    return sensors


@contextmanager
def boards(links: Path) -> Iterator[None]:
    """`powmon sim` serving every sensor's board on a pty, linked as links/<ID>."""
    specs = [f"L{i}:amps=1,seed={i}" for i in range(SENSORS)] + ["R10:amps=1,seed=99"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "powmon", "sim", *specs, "--baud", str(BAUD),
         "--link-dir", str(links), "--log-level", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: all((links / f"L{i}").exists() for i in range(SENSORS))
                 and (links / "R10").exists(), 30, "the simulated boards")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# (label, STREAM, period of the eight fast sensors): the two modes at 100 Hz, and streams at
# 1 kHz, where the board sends 10 samples a frame and a wake-up publishes them as one batch.
RUNS: Final = (("stream", "on", 0.01), ("poll", "off", 0.01), ("stream 1 kHz", "on", 0.001))


def run(plan: Plan) -> list[Row]:
    rows: list[Row] = []
    for label, stream, period in RUNS[:1] if plan.quick else RUNS:
        rows += run_mode(plan, label, stream, period)
    return rows


def _reading(watch: BusWatch, sensor: str) -> bool:
    return int(watch.counter("reader", sensor, "readings", 0)) > 0


def run_mode(plan: Plan, mode: str, stream: str, period: float) -> list[Row]:
    """The pipeline's cost first, with no subscriber but the writer (a tap or the benchmark's
    own watcher would cost the broker a copy of every message); then the tap's latency."""
    seconds = 0.8 if plan.quick else 6.0
    work = plan.sub(f"live-{mode.replace(' ', '-')}")
    links = work / "tty"
    sensors = _sensors(links, period)
    ids = [str(s["SENSORS_ID"]) for s in sensors]
    with boards(links):
        pipe = Pipeline(work, sensors, FLUSH_INTERVAL=FLUSH_INTERVAL, BUDRATE=BAUD,
                        STREAM=stream)
        with pipe, BusWatch(pipe.backend, readings=False) as watch:
            pipe.broker()
            pipe.writer()
            wait_for(lambda: watch.get("writer", "writer"), 30, "the writer's heartbeat")
            for sensor in ids:
                pipe.reader(sensor)
            wait_for(lambda: all(_reading(watch, s) for s in ids), 60, "every reader")
            r10_pid = pipe.procs["reader R10"].pid
            r10 = (cpu_seconds(r10_pid), time.monotonic())  # a long window: /proc has 10 ms ticks
            time.sleep(1.0)
            cpu: dict[str, float] = {}
            pids = pipe.pids()
            with CsvTail(pipe.data, time.time_ns()) as tail:
                start = time.time_ns()
                with cpu_window(pids, cpu):
                    time.sleep(seconds)
                end = time.time_ns()
                tap = worker("latency", "--endpoint", pipe.backend, "--seconds", str(seconds),
                             "--warmup", "1.0")
                tap_ms = result(tap)["latencies_ms"]
                time.sleep(FLUSH_INTERVAL + 0.3)  # the rows of the windows reach the disk
            r10_share = (cpu_seconds(r10_pid) - r10[0]) / (time.monotonic() - r10[1]) * 100
            rss = {k: peak_rss_mb(p) for k, p in pids.items()}
    counts = tail.counts(start, end)
    return _latency_rows(mode, tap_ms, tail.latencies_ms) + _cost_rows(
        mode, cpu, counts, rss, seconds, r10_share
    )


def _latency_rows(mode: str, tap: list[float], disk: list[float]) -> list[Row]:
    limit = FLUSH_INTERVAL * 1000 + 10
    tap99, disk99 = percentile(tap, 99), percentile(disk, 99)
    if mode not in CPU_TARGETS:  # 1 kHz: a frame holds 10 ms of samples; no latency target
        return [Row("3", f"tap latency p99, {mode}", "ms", tap99,
                    note="a frame's first sample waits for its last (10 ms)")]
    return [
        Row("3", f"tap latency p50, {mode}", "ms", percentile(tap, 50),
            note=f"{len(tap)} readings"),
        Row("3", f"tap latency p99, {mode}", "ms", tap99, 5.0, "target", "< 5 ms", tap99 < 5.0),
        Row("3", f"disk latency p50, {mode}", "ms", percentile(disk, 50),
            note=f"{len(disk)} rows"),
        Row("3", f"disk latency p99, {mode}", "ms", disk99, limit, "FLUSH_INTERVAL+10ms",
            f"<= {limit:.0f} ms", bool(disk) and disk99 <= limit),
    ]


def _cost_rows(mode: str, cpu: dict[str, float], counts: dict[str, int],
               rss: dict[str, float], seconds: float, r10: float) -> list[Row]:
    fast = [f"reader L{i}" for i in range(SENSORS)]
    fast_n = sum(counts.get(f"L{i}", 0) for i in range(SENSORS))
    total_n = sum(counts.values())
    per = 1000 / max(total_n, 1)
    whole = sum(cpu.values()) * per
    reader_rss = max(v for k, v in rss.items() if k.startswith("reader "))
    if mode not in CPU_TARGETS:
        return [
            Row("4", f"readers @1 kHz, {mode}", "CPU s/1000",
                sum(cpu.get(k, 0.0) for k in fast) / max(fast_n, 1) * 1000),
            Row("4", f"whole pipeline, {mode}", "CPU s/1000", whole, CPU_TARGETS["stream"],
                "100 Hz target", note=f"{total_n} readings in {seconds:.0f} s; informational"),
        ]
    target = CPU_TARGETS[mode]
    return [
        Row("4", f"readers @100 Hz, {mode}", "CPU s/1000",
            sum(cpu.get(k, 0.0) for k in fast) / max(fast_n, 1) * 1000),
        Row("4", f"broker, {mode}", "CPU s/1000", cpu.get("broker", 0.0) * per,
            note="8 x 100 Hz"),
        Row("4", f"writer, {mode}", "CPU s/1000", cpu.get("writer", 0.0) * per,
            note="8 x 100 Hz"),
        Row("4", f"whole pipeline, {mode}", "CPU s/1000", whole, target, "target",
            f"<= {target}", whole <= target, note=f"{total_n} readings in {seconds:.0f} s"),
        Row("4", f"reader at 10 Hz, {mode}", "% of a core", r10, 1.0, "target", "< 1%",
            r10 < 1.0, note=f"pty board at {BAUD} baud"),
        Row("4", f"reader peak RSS, {mode}", "MiB", reader_rss, 40.0, "target", "< 40 MiB",
            reader_rss < 40.0),
        Row("4", f"broker peak RSS, {mode}", "MiB", rss.get("broker", 0.0)),
        Row("4", f"writer peak RSS, {mode}", "MiB", rss.get("writer", 0.0)),
    ]
