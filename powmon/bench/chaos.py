"""The chaos soak: `powmon run` under kill -9, and every reading stored once or named.

Four simulated sensors (two polled, two streaming, 50 and 100 Hz) feed `powmon run`, whose
uplink posts JSON to a receiver in this process. A seeded schedule kills -9 one process every
1-4 s (a reader, the writer, the uplink, the broker, and once `powmon run` itself, which is
then started again) and takes the receiver down once for a few seconds. Then the pipeline is
stopped cleanly, a lone uplink empties the spool, and what is on disk is checked against
README's guarantee:

- every (sensor, session, seq) from 0 to the last one known (stored, named, or said by the
  reader's last words) is stored exactly once in the CSV files or named in gaps.csv, never both;
- the receiver got every stored reading, by (sensor, session, seq), or uplink-gaps.csv says
  why; it got nothing that is not a reading; duplicates (at-least-once delivery) are counted;
- energy.json agrees with `powmon report` within rounding.

Used by tests/e2e/test_chaos.py (about a minute) and by `powmon bench chaos --minutes N`. The
seed is printed, so that a failure can be replayed: the same seed gives the same schedule.

This module is long because it is one story told in order (start, the schedule of kills, the
clean stop, the checks of every guarantee), which reads best in one place.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml

from powmon.base.energy import EnergyMeter
from powmon.bench.procs import free_endpoint, pids_of, wait_for
from powmon.bench.receiver import Ingest

Key = tuple[str, str, int]
SENSORS: Final = (  # id, sim options, settings: 50-100 Hz, polled and streamed
    ("CPA", "amps=1.5&noise=0.02", {"STREAM": "off", "POLLING_DELAY": 0.01}),
    ("CPB", "amps=4&ac=50", {"STREAM": "off", "POLLING_DELAY": 0.02}),
    ("CSA", "amps=2&noise=0.02", {"STREAM": "on", "STREAM_HZ": 100}),
    ("CSB", "amps=0.5", {"STREAM": "on", "STREAM_HZ": 50}),
)
TARGETS: Final = (*(f"reader {s[0]}" for s in SENSORS), "writer", "uplink", "broker")
OUTAGE_S: Final = (2.0, 4.0)
GAP_FIELDS: Final = ("sensor_id", "session", "first_seq", "last_seq", "reason")
START_LINE: Final = re.compile(r"powmon-reader\[(\d+)\].*reader start sensor=(\S+) .*session=(\S+)")
STOP_LINE: Final = re.compile(r"powmon-reader\[(\d+)\].*reader stop sensor=(\S+) readings=(\d+)")


# ---- the receiver ---------------------------------------------------------------------------


class Receiver(Ingest):
    """A JSON ingest endpoint on 127.0.0.1 that can go down and come back on the same port,
    keeping every reading it got by (sensor, session, seq)."""

    def __init__(self) -> None:
        super().__init__(self)
        self.got: Counter[Key] = Counter()
        self.raw: dict[Key, float] = {}
        self._lock = threading.Lock()
        self.up()

    def connected(self) -> None:
        pass

    def take(self, body: bytes) -> int:
        try:
            readings = json.loads(body)
        except ValueError:
            return 400
        with self._lock:
            for r in readings:
                key = (str(r["sensor_id"]), str(r["session"]), int(r["seq"]))
                self.got[key] += 1
                self.raw[key] = float(r["raw"])
        return 200

    def keys(self) -> Counter[Key]:
        with self._lock:
            return Counter(self.got)


# ---- the pipeline under test ----------------------------------------------------------------


def write_settings(workdir: Path, url: str) -> Path:
    sensors = []
    for sensor_id, options, extra in SENSORS:
        sensors.append({"PORT": f"sim://{sensor_id}?{options}", "SENSORS_ID": sensor_id, **extra})
    settings = {
        "SENSORS": sensors, "BUDRATE": 115200, "TIMEOUT": 0.5, "LOG_LEVEL": 1,
        "LOCAL_DATA_ROOT": "data", "LOCAL_DATA_FILE": "data.csv", "FILE_SIZE_LIMIT": 2_000_000,
        "BROKER_FRONTEND": free_endpoint(), "BROKER_BACKEND": free_endpoint(),
        "HEARTBEAT_INTERVAL": 0.25, "STALL_TIMEOUT": 5, "RESTART_BACKOFF_MAX": 1.0,
        "REMOTE_SAVE": True, "UPLINK_URL": url, "UPLINK_FORMAT": "json",
        "UPLINK_BATCH_WAIT": 0.2, "UPLINK_TIMEOUT": 2.0, "UPLINK_BACKOFF_MAX": 1.0,
    }
    path = workdir / "settings.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Result:
    seed: int
    seconds: float
    kills: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    rows: int = 0
    doubled: int = 0
    gaps: Counter[str] = field(default_factory=Counter)  # readings named lost, by reason
    uplink_gaps: Counter[str] = field(default_factory=Counter)
    received: int = 0
    receiver_duplicates: int = 0
    energy: dict[str, tuple[float, float]] = field(default_factory=dict)  # json, report
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kills = ", ".join(f"{k} {n}" for k, n in sorted(self.kills.items()))
        return (
            f"seed {self.seed}, {self.seconds:.0f} s: kills {sum(self.kills.values())} "
            f"({kills}); sessions {self.sessions}; rows {self.rows}; doubled {self.doubled}; "
            f"gaps {dict(self.gaps)}; uplink gaps {dict(self.uplink_gaps)}; received "
            f"{self.received} ({self.receiver_duplicates} duplicates); problems "
            f"{len(self.problems)}"
        )


class Chaos:
    """One soak run in `workdir`."""

    def __init__(self, workdir: Path, seed: int, seconds: float,
                 say: Callable[[str], None] = lambda _: None) -> None:
        self.workdir = workdir
        self.seed = seed
        self.seconds = seconds
        self.say = say
        self.rng = random.Random(seed)
        self.receiver = Receiver()
        self.settings = write_settings(workdir, self.receiver.url)
        self.data = workdir / "data"
        self.log = workdir / "run.log"
        self.run: subprocess.Popen[bytes] | None = None
        self.result = Result(seed, seconds)

    def __enter__(self) -> Chaos:
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in pids_of(self.settings).values():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.receiver.down()

    def _start_run(self) -> None:
        with self.log.open("ab") as log:
            self.run = subprocess.Popen(
                [sys.executable, "-m", "powmon", "run", "--config", str(self.settings)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def schedule(self) -> list[tuple[float, str]]:
        """(seconds from the start, what): a kill every 1-4 s, each process in turn in a
        shuffled order (so that every kind is hit), `run` once midway, one outage."""
        times: list[float] = []
        t = self.rng.uniform(1, 4)
        while t < self.seconds:
            times.append(t)
            t += self.rng.uniform(1, 4)
        events: list[tuple[float, str]] = []
        turn: list[str] = []
        for i, at in enumerate(times):
            if i == len(times) // 2:
                events.append((at, "run"))
                continue
            if not turn:
                turn = self.rng.sample(TARGETS, len(TARGETS))
            events.append((at, turn.pop()))
        start = self.rng.uniform(0.2, 0.6) * self.seconds
        events += [(start, "outage"), (start + self.rng.uniform(*OUTAGE_S), "back")]
        return sorted(events)

    def soak(self) -> Result:
        self._start_run()
        wait_for(lambda: len(_stored(self.data)) >= len(SENSORS) and self.receiver.keys(),
                 60, "rows from every sensor and the first delivery")
        began = time.monotonic()
        for at, what in self.schedule():
            time.sleep(max(0.0, began + at - time.monotonic()))  # the schedule is the fault
            self._do(what)
        wait_for(lambda: pids_of(self.settings).keys() >= {"run", *TARGETS}, 60,
                 "every process running again after the last kill")
        self._stop()
        self._drain()
        verify(self)
        return self.result

    def _do(self, what: str) -> None:
        if what == "outage":
            self.receiver.down()
        elif what == "back":
            self.receiver.up()
        elif what == "run":
            assert self.run is not None  # noqa: S101 - started in soak()
            self.run.kill()
            self.run.wait()
            wait_for(lambda: not pids_of(self.settings), 30,
                     "every child gone after kill -9 of powmon run")
            self.result.kills["run"] += 1
            self._start_run()
        else:
            pid = pids_of(self.settings).get(what)
            if pid is None:
                return  # being restarted right now: nothing to kill
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                self.result.kills[what] += 1
        self.say(f"chaos: {what}")

    def _stop(self) -> None:
        assert self.run is not None  # noqa: S101 - started in soak()
        self.run.send_signal(signal.SIGTERM)
        code = self.run.wait(60)
        if code != 0:
            self.result.problems.append(f"powmon run exited {code} on SIGTERM")
        wait_for(lambda: not pids_of(self.settings), 30, "every child gone after the stop")

    def _drain(self) -> None:
        """A lone uplink sends what the spool still holds, then stops."""
        with self.log.open("ab") as log:
            uplink = subprocess.Popen(
                [sys.executable, "-m", "powmon.uplink", "--config", str(self.settings)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            wait_for(lambda: _spooled(self.data / "uplink-spool.sqlite3") == 0, 60,
                     "the spool sent to the receiver")
        finally:
            uplink.send_signal(signal.SIGTERM)
            uplink.wait(30)


def _spooled(path: Path) -> int | None:
    """Readings still in the spool (None while it cannot be read)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
    except sqlite3.Error:
        return None


# ---- what is on disk ------------------------------------------------------------------------


def _stored(data: Path) -> dict[Key, list[str]]:
    """Every data row by key (the rows' raw values; a doubled key keeps a list of them)."""
    rows: dict[Key, list[str]] = {}
    for path in sorted(data.glob("data-*.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                rows.setdefault((r["sensor_id"], r["session"], int(r["seq"])), []).append(r["raw"])
    return rows


def _named(path: Path) -> Iterator[tuple[Key, str]]:
    """(key, reason) for every seq a loss log names (device_dropped rows name none)."""
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            for seq in range(int(r["first_seq"]), int(r["last_seq"]) + 1):
                yield (r["sensor_id"], r["session"], seq), r["reason"]


def _last_words(log: Path) -> dict[tuple[str, str], int]:
    """(sensor, session) -> readings published, for readers that stopped cleanly."""
    sessions: dict[str, tuple[str, str]] = {}
    out: dict[tuple[str, str], int] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := START_LINE.search(line):
            sessions[m[1]] = (m[2], m[3])
        elif (m := STOP_LINE.search(line)) and m[1] in sessions:
            out[sessions[m[1]]] = int(m[3])
    return out


def verify(chaos: Chaos) -> None:
    """Check the guarantee against the files; fill in the result's counts and problems."""
    res, data = chaos.result, chaos.data
    stored = _stored(data)
    res.rows = sum(len(v) for v in stored.values())
    res.doubled = sum(len(v) - 1 for v in stored.values())
    if res.doubled:
        res.problems.append(f"{res.doubled} readings stored twice, e.g. "
                            f"{[k for k, v in stored.items() if len(v) > 1][:3]}")
    named: dict[Key, str] = {}
    for key, reason in _named(data / "gaps.csv"):
        if key in named:
            res.problems.append(f"{key} named twice in gaps.csv")
        named[key] = reason
        res.gaps[reason] += 1
    both = stored.keys() & named.keys()
    if both:
        res.problems.append(f"{len(both)} readings stored and named lost, e.g. {sorted(both)[:3]}")
    last: dict[tuple[str, str], int] = {}
    for s, session, seq in (*stored, *named):
        last[(s, session)] = max(last.get((s, session), -1), seq)
    for stream, published in _last_words(chaos.log).items():
        last[stream] = max(last.get(stream, -1), published - 1)
    res.sessions = len(last)
    for (sensor, session), top in sorted(last.items()):
        unaccounted = [q for q in range(top + 1)
                       if (sensor, session, q) not in stored and (sensor, session, q) not in named]
        if unaccounted:
            res.problems.append(
                f"{sensor}/{session}: {len(unaccounted)} seqs neither stored nor in gaps.csv "
                f"(first {unaccounted[:5]})")
    _verify_receiver(chaos, stored, named)
    _verify_energy(chaos)


def _verify_receiver(chaos: Chaos, stored: dict[Key, list[str]], named: dict[Key, str]) -> None:
    res = chaos.result
    got = chaos.receiver.keys()
    res.received = len(got)
    res.receiver_duplicates = sum(n - 1 for n in got.values())
    uplink_named: dict[Key, str] = {}
    for key, reason in _named(chaos.data / "uplink-gaps.csv"):
        uplink_named[key] = reason
        res.uplink_gaps[reason] += 1
    missing = [k for k in stored if k not in got and k not in uplink_named]
    if missing:
        res.problems.append(f"{len(missing)} stored readings never reached the receiver nor "
                            f"uplink-gaps.csv, e.g. {sorted(missing)[:3]}")
    foreign = [k for k in got if k not in stored and k not in named]
    if foreign:
        res.problems.append(f"{len(foreign)} readings at the receiver that are no reading, "
                            f"e.g. {sorted(foreign)[:3]}")
    differ = [k for k in got.keys() & stored.keys()
              if float(stored[k][0]) != chaos.receiver.raw[k]]
    if differ:
        res.problems.append(f"{len(differ)} readings differ between CSV and receiver")


def _verify_energy(chaos: Chaos) -> None:
    res = chaos.result
    state = json.loads((chaos.data / "energy.json").read_text(encoding="utf-8"))
    saved = {s: t.energy_wh for s, t in EnergyMeter.from_state(state, {}).snapshot().items()}
    done = subprocess.run(
        [sys.executable, "-m", "powmon", "report", str(chaos.data), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if done.returncode != 0:
        res.problems.append(f"powmon report failed: {done.stderr.strip()}")
        return
    report = {s: float(v["energy_wh"]) for s, v in json.loads(done.stdout)["sensors"].items()}
    for sensor in sorted(saved.keys() | report.keys()):
        a, b = saved.get(sensor, 0.0), report.get(sensor, 0.0)
        res.energy[sensor] = (a, b)
        if abs(a - b) > 1e-3 + 1e-6 * abs(b):
            res.problems.append(f"{sensor}: energy.json says {a:.6f} Wh, report {b:.6f} Wh")


def soak(workdir: Path, seed: int, seconds: float,
         say: Callable[[str], None] = lambda _: None) -> Result:
    """Run one soak; the result says what happened and what broke the guarantee."""
    workdir.mkdir(parents=True, exist_ok=True)
    with Chaos(workdir, seed, seconds, say) as chaos:
        return chaos.soak()
