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
import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from powmon.bench.procs import BusWatch, Pipeline, cpu_window, pty_boards, wait_for
from powmon.bench.remote_bench import server
from powmon.bench.results import Figure, cpu_seconds, peak_rss_mb, percentile
from powmon.bench.runner import Plan, result, worker
from powmon.sink.api import GATHER

SENSORS: Final = 8
FLUSH_INTERVAL: Final = 0.5  # the default
TAIL_POLL: Final = 0.001
BAUD: Final = 115200


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


def boards(links: Path) -> contextlib.AbstractContextManager[None]:
    """`powmon sim` serving every sensor's board on a pty, linked as links/<ID>."""
    specs = [f"L{i}:amps=1,seed={i}" for i in range(SENSORS)] + ["R10:amps=1,seed=99"]
    return pty_boards(links, specs, BAUD)


@dataclass(frozen=True)
class Run:
    """One live run: the eight fast sensors' mode and period, PUBLISH_INTERVAL, the uplink."""

    mode: str  # "stream", "poll"
    period: float
    interval: float
    uplink: bool = False

    @property
    def label(self) -> str:
        rate = "1 kHz" if self.period < 0.01 else "100 Hz"
        return f"{self.mode}{' + uplink' if self.uplink else ''}, 8 x {rate}"

    @property
    def stream(self) -> str:
        return "on" if self.mode == "stream" else "off"


@dataclass
class Measured:
    run: Run
    cpu: dict[str, float]  # CPU seconds per process key over the window
    counts: dict[str, int]  # readings per sensor taken in the window
    tap_ms: list[float]
    disk_ms: list[float]
    rss: dict[str, float]
    r10: float  # the 10 Hz reader's share of a core, %

    @property
    def readings(self) -> int:
        return sum(self.counts.values())

    def per_1000(self, keys: Iterable[str] | None = None) -> float:
        keys = list(self.cpu) if keys is None else list(keys)
        return sum(self.cpu.get(k, 0.0) for k in keys) * 1000 / max(self.readings, 1)

    def breakdown(self) -> str:
        """Per-process CPU s/1000 readings: readers (all), broker, writer, uplink."""
        readers = [k for k in self.cpu if k.startswith("reader ")]
        parts = [f"readers {self.per_1000(readers):.4f}"]
        parts += [f"{k} {self.per_1000([k]):.4f}" for k in ("broker", "writer", "uplink")
                  if k in self.cpu]
        return ", ".join(parts)


# Whole-pipeline CPU per 1,000 readings at PUBLISH_INTERVAL 0.1 (issue 19's targets).
TARGETS: Final = {"stream, 8 x 100 Hz": 0.05, "poll, 8 x 100 Hz": 0.15,
                  "stream + uplink, 8 x 100 Hz": 0.08, "stream, 8 x 1 kHz": 0.02}
INTERVAL: Final = 0.1
RUNS: Final = (
    Run("stream", 0.01, INTERVAL), Run("stream", 0.01, 0.0),
    Run("poll", 0.01, INTERVAL), Run("poll", 0.01, 0.0),
    Run("stream", 0.01, INTERVAL, uplink=True),
    Run("stream", 0.001, INTERVAL), Run("stream", 0.001, 0.0),
)
READER_RSS_MB: Final = 25.0


def _reading(watch: BusWatch, sensor: str) -> bool:
    return int(watch.counter("reader", sensor, "readings", 0)) > 0


def run(plan: Plan) -> list[Figure]:
    runs = RUNS[:1] if plan.quick else RUNS
    measured = [measure(plan, r) for r in runs]
    rows: list[Figure] = []
    bare = _bare_wake_us(plan)
    for m in measured:
        if m.run.interval:
            ref = next((x for x in measured if x.run.interval == 0 and x.run.mode == m.run.mode
                        and x.run.period == m.run.period and not x.run.uplink), None)
            rows += _rows(m, ref, bare)
    return rows


def measure(plan: Plan, r: Run) -> Measured:
    """The pipeline's cost first, with no subscriber but the writer (and the uplink) (a tap or
    the benchmark's own watcher would cost the broker a copy of every message); then the
    tap's latency."""
    seconds = 0.8 if plan.quick else 6.0
    name = r.label.replace(" ", "-").replace(",", "").replace("+", "")
    work = plan.sub(f"live-{name}-{r.interval:g}")
    links = work / "tty"
    sensors = _sensors(links, r.period)
    ids = [str(s["SENSORS_ID"]) for s in sensors]
    extra: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        if r.uplink:
            url = stack.enter_context(server("healthy"))
            extra = {"REMOTE_SAVE": True, "UPLINK_URL": url, "UPLINK_FORMAT": "json"}
        stack.enter_context(boards(links))
        pipe = Pipeline(work, sensors, FLUSH_INTERVAL=FLUSH_INTERVAL, BUDRATE=BAUD,
                        STREAM=r.stream, PUBLISH_INTERVAL=r.interval, **extra)
        with pipe, BusWatch(pipe.backend, readings=False) as watch:
            pipe.broker()
            pipe.writer()
            if r.uplink:
                pipe.uplink()
            wait_for(lambda: watch.get("writer", "writer"), 30, "the writer's heartbeat")
            for sensor in ids:
                pipe.reader(sensor)
            wait_for(lambda: all(_reading(watch, s) for s in ids), 60, "every reader")
            r10_pid = pipe.procs["reader R10"].pid
            r10 = (cpu_seconds(r10_pid), time.monotonic())
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
                time.sleep(FLUSH_INTERVAL + r.interval + 0.5)  # the windows' rows on disk
            r10_share = (cpu_seconds(r10_pid) - r10[0]) / (time.monotonic() - r10[1]) * 100
            rss = {k: peak_rss_mb(p) for k, p in pids.items()}
    cpu.pop("reader R10", None)  # the 10 Hz reader is figure "reader at 10 Hz", not 8 x N Hz
    counts = {k: v for k, v in tail.counts(start, end).items() if k != "R10"}
    return Measured(r, cpu, counts, tap_ms, tail.latencies_ms, rss, r10_share)


def _bare_wake_us(plan: Plan) -> float:
    """One bare wake-up of a process sleeping on a 100 ms grid, in us of CPU: the floor of
    a reader's cost per PUBLISH_INTERVAL."""
    got = result(worker("wakes", "--period", "0.1", "--seconds", "1" if plan.quick else "5"))
    return float(got["cpu_s"]) / max(int(got["wakes"]), 1) * 1e6


def _rows(m: Measured, ref: Measured | None, bare_us: float) -> list[Figure]:
    r = m.run
    target = TARGETS.get(r.label)
    whole = m.per_1000()
    ref_value = ref.per_1000() if ref is not None else None
    note = f"{m.readings} readings in the window; {m.breakdown()}"
    if ref is not None:
        note += f"; at PUBLISH_INTERVAL 0: {ref.breakdown()}"
    # The floor: the readers' own wake-ups alone, at what one bare wake-up costs here (a
    # stream reader wakes once per interval, a polled one once per slot).
    wakes = r.period / max(r.period, r.interval) if r.mode == "stream" else 1.0
    note += f"; floor (bare reader wake-ups, {bare_us:.0f} us each): {wakes * bare_us / 1e3:.4f}"
    rows = [Figure("4", f"whole pipeline, {r.label}", "CPU s/1000", whole, ref_value,
                "PUBLISH_INTERVAL 0", f"<= {target}" if target else "",
                None if target is None else whole <= target, note=note)]
    limit = r.interval * 1000 + 10
    tap99 = percentile(m.tap_ms, 99)
    rows.append(Figure("3", f"tap latency p99, {r.label}", "ms", tap99,
                    percentile(ref.tap_ms, 99) if ref is not None else None,
                    "PUBLISH_INTERVAL 0", f"<= {limit:.0f} ms (interval + 10)",
                    bool(m.tap_ms) and tap99 <= limit,
                    note=f"p50 {percentile(m.tap_ms, 50):.1f} ms, {len(m.tap_ms)} readings"))
    disk = FLUSH_INTERVAL * 1000 + r.interval * 1000 + GATHER * 1000 + 10
    rows.append(Figure("3", f"disk latency p99, {r.label}", "ms", percentile(m.disk_ms, 99),
                    disk, "flush + interval + gather + 10 ms",
                    note=f"p50 {percentile(m.disk_ms, 50):.0f} ms, {len(m.disk_ms)} rows"))
    if r.period >= 0.01 and not r.uplink:
        reader_rss = max(v for k, v in m.rss.items() if k.startswith("reader "))
        rows += [
            Figure("4", f"reader at 10 Hz, {r.mode}", "% of a core", m.r10,
                note=f"pty board at {BAUD} baud"),
            Figure("4", f"reader peak RSS, {r.mode}", "MiB", reader_rss, READER_RSS_MB, "target",
                f"<= {READER_RSS_MB:.0f} MiB", reader_rss <= READER_RSS_MB),
            Figure("4", f"broker peak RSS, {r.mode}", "MiB", m.rss.get("broker", 0.0)),
            Figure("4", f"writer peak RSS, {r.mode}", "MiB", m.rss.get("writer", 0.0)),
        ]
    return rows
