"""The real PowMon processes under benchmark, and a watcher on the bus that sees what they do.

Each benchmark starts the same children `powmon run` would (`python -m powmon.readers`, the
broker, the writer, the uplink) from a settings.yaml in a scratch folder, on free loopback
ports, so the numbers are those of the shipped code, process boundaries included.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
import zmq

from powmon.base.processes import pipeline
from powmon.bench.results import cpu_seconds
from powmon.common.errors import SchemaError
from powmon.common.schema import decode_message
from powmon.common.schema.envelope import READING_PREFIX, STATUS_PREFIX
from powmon.common.schema.status import Status
from powmon.common.settings import load_settings
from powmon.common.transport import sub_socket

START_TIMEOUT = 60.0


def free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until `predicate` is truthy; a benchmark that cannot start is a failure, not a 0."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class Pipeline:
    """A settings.yaml plus the child processes started from it; stop() ends them all."""

    def __init__(self, workdir: Path, sensors: Sequence[dict[str, Any]], **overrides: Any):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.data = workdir / "data"
        self.frontend = free_endpoint()
        self.backend = free_endpoint()
        settings: dict[str, Any] = {
            "SENSORS": list(sensors), "BUDRATE": 115200, "TIMEOUT": 0.5, "POLLING_DELAY": 0.0,
            "LOCAL_DATA_ROOT": str(self.data), "LOCAL_DATA_FILE": "data.csv", "LOG_LEVEL": 0,
            "BROKER_FRONTEND": self.frontend, "BROKER_BACKEND": self.backend,
        }
        settings.update(overrides)
        self.settings = workdir / "settings.yaml"
        self.settings.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        # The file is never rewritten: its process table is read once (256 readers start).
        self._specs = {s.key: s for s in pipeline(load_settings(self.settings))}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, key: str) -> subprocess.Popen[bytes]:
        """Start one process of the pipeline's process table (base/processes.py) by key."""
        log = (self.workdir / f"{key.replace(' ', '-')}.log").open("ab")
        argv = self._specs[key].argv(str(self.settings))
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[key] = proc
        return proc

    def broker(self) -> subprocess.Popen[bytes]:
        return self.start("broker")

    def writer(self) -> subprocess.Popen[bytes]:
        return self.start("writer")

    def uplink(self) -> subprocess.Popen[bytes]:
        return self.start("uplink")

    def reader(self, sensor_id: str) -> subprocess.Popen[bytes]:
        return self.start(f"reader {sensor_id}")

    def pids(self, prefix: str = "") -> dict[str, int]:
        return {k: p.pid for k, p in self.procs.items() if k.startswith(prefix)}

    def stop(self, prefix: str = "", timeout: float = 20.0) -> None:
        """SIGTERM (readers first, broker last), wait with a deadline, then kill."""
        keys = [k for k in self.procs if k.startswith(prefix)]
        last = ("writer", "broker")
        for group in ([k for k in keys if k not in last], *([k] for k in last if k in keys)):
            procs = [self.procs.pop(k) for k in group]
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BusWatch:
    """A subscriber in this process: latest status per process, and readings counted per sensor.

    It runs on a thread of its own and only counts (and tracks seq), so that it keeps up with
    the rates of the live benchmarks; the throughput benchmark does not subscribe to readings.
    """

    def __init__(self, backend: str, readings: bool = True, hwm: int = 1_000_000) -> None:
        self._backend = backend
        self._topics = [STATUS_PREFIX] + ([READING_PREFIX] if readings else [])
        self._hwm = hwm
        self.status: dict[tuple[str, str], Status] = {}
        self.counts: dict[str, int] = defaultdict(int)
        self.gaps: dict[str, int] = defaultdict(int)
        self._last: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="buswatch", daemon=True)

    def __enter__(self) -> BusWatch:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = sub_socket(ctx, self._backend, self._topics, self._hwm, curve=None)  # loopback
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    for _ in range(1000):
                        try:
                            self._take(sock.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
        finally:
            sock.close(0)
            ctx.term()

    def _take(self, frames: list[bytes]) -> None:
        try:
            message = decode_message(frames)
        except SchemaError:
            return
        if isinstance(message, Status):
            with self._lock:
                self.status[(message.process, message.ident)] = message
            return
        for r in message.readings:
            key = (r.sensor_id, r.session)
            last = self._last.get(key)
            if last is not None and r.seq != last + 1:
                self.gaps[r.sensor_id] += 1
            self._last[key] = r.seq
            self.counts[r.sensor_id] += 1

    def get(self, process: str, ident: str) -> Status | None:
        with self._lock:
            return self.status.get((process, ident))

    def counter(self, process: str, ident: str, name: str, default: Any = None) -> Any:
        status = self.get(process, ident)
        return default if status is None else status.counters.get(name, default)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def pids_of(settings: Path) -> dict[str, int]:
    """The live processes started with this settings file, by process-table key ('run' for
    `powmon run`), from /proc (Linux)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a.decode(errors="replace")
                    for a in (entry / "cmdline").read_bytes().split(b"\0")]
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(settings) not in argv or "-m" not in argv or state == "Z":
            continue
        module = argv[argv.index("-m") + 1]
        if module == "powmon" and "run" in argv:
            found["run"] = int(entry.name)
        elif module == "powmon.readers" and "--sensor-id" in argv:
            found[f"reader {argv[argv.index('--sensor-id') + 1]}"] = int(entry.name)
        elif module.startswith("powmon."):
            found[module.removeprefix("powmon.")] = int(entry.name)
    return found


@contextlib.contextmanager
def pty_boards(links: Path, specs: Sequence[str], baud: int) -> Iterator[None]:
    """`powmon sim SPEC...` serving each board on a pty at `baud`, linked as links/<ID>, in a
    process of its own (a board's CPU is not the pipeline's)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "powmon", "sim", *specs, "--baud", str(baud),
         "--link-dir", str(links), "--log-level", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ids = [spec.split(":", 1)[0] for spec in specs]
    try:
        wait_for(lambda: all((links / i).exists() for i in ids), 30, "the simulated boards")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def csv_seqs(data: Path) -> dict[tuple[str, str], list[int]]:
    """(sensor_id, session) -> seqs in file order, from every CSV file the writer wrote."""
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for path in sorted(data.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle)
            next(rows, None)
            for row in rows:
                seqs[(row[1], row[2])].append(int(row[3]))
    return seqs


def lost_readings(seqs: dict[tuple[str, str], list[int]], expected: dict[str, int]) -> int:
    """Readings missing or doubled in CSV, against how many each sensor published."""
    per_sensor: dict[str, set[int]] = defaultdict(set)
    rows: dict[str, int] = defaultdict(int)
    for (sensor, _session), values in seqs.items():
        per_sensor[sensor].update(values)
        rows[sensor] += len(values)
    bad = 0
    for sensor, count in expected.items():
        have = per_sensor.get(sensor, set())
        bad += count - len(have & set(range(count))) + (rows[sensor] - len(have))
    return bad


@contextlib.contextmanager
def cpu_window(pids: dict[str, int], out: dict[str, float]) -> Iterator[None]:
    """CPU seconds each pid used inside the `with` block (utime + stime from /proc)."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    yield
    for k, p in pids.items():
        out[k] = cpu_seconds(p) - before[k]
