"""The pipeline's health, worked out from heartbeats: one model for `powmon status`, the web
page's status and the Prometheus metrics, so the three can never disagree.

A pure model (no sockets, no clock of its own): it is fed decoded Status messages (and, by the
web process, readings) with the local monotonic time they arrived, and answers at a given time
which process is up, how each sensor is doing, and whether the pipeline as a whole is healthy.
Which processes and sensors to expect comes from the settings, so a process that never sent a
heartbeat shows as down instead of missing.

Heartbeat fields are read only here, through `_field` (the typed part of the status first:
start time and a reader's progress; the counters map for the rest), and every age is
measured on the sender's own clock (heartbeat time minus the event's time) plus the local time
since the heartbeat arrived, so a skewed clock on another host does not make a fresh sensor
look stale.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from powmon.base.processes import pipeline
from powmon.common.schema.readings import Reading
from powmon.common.schema.status import Status
from powmon.common.settings import Settings

STALE_BEATS: Final = 3  # a process is down after this many heartbeat intervals of silence
STALE_MIN_S: Final = 2.0  # ... and never sooner than this (a busy 2-core host delays beats)
DOWN_STATES: Final = frozenset({"stopped", "stopping"})
RATE_WINDOW_S: Final = 10.0  # readings/s over the reader heartbeats of the last 10 s
MAX_EXTRA: Final = 64  # processes and sensors on the bus that the settings do not name
NS: Final = 1e9

Json = dict[str, Any]


def process_name(process: str, ident: str) -> str:
    """'writer', 'reader/VIC': the name of a process in the JSON, the table and metrics."""
    return process if process == ident else f"{process}/{ident}"


@dataclass(frozen=True, slots=True)
class Expected:
    """What the settings say should be running: required processes and sensors."""

    processes: tuple[tuple[str, str, bool], ...]  # (process, ident, required)
    sensors: tuple[str, ...]
    heartbeat_interval: float
    stall_timeout: float
    reader_timeout: float  # longest serial TIMEOUT: a reader's beat can be late by that much

    @classmethod
    def from_settings(cls, settings: Settings) -> Expected:
        procs = tuple((p.process, p.ident, p.required) for p in pipeline(settings))
        return cls(
            processes=procs, sensors=tuple(s.sensor_id for s in settings.sensors),
            heartbeat_interval=settings.heartbeat_interval, stall_timeout=settings.stall_timeout,
            reader_timeout=max(s.timeout for s in settings.sensors),
        )


_PROGRESS: Final = frozenset({"session", "seq", "readings", "replay", "last_reading_ns",
                              "problem", "waiting_for_port"})


def _field(status: Status, name: str) -> Any:
    """A heartbeat field: the typed part of the status where the schema has one (start time,
    a reader's progress), else the counters entry (what a process reports for people)."""
    if name == "started_ns":
        return status.started_ns or None
    if name in _PROGRESS and status.reader is not None:
        return getattr(status.reader, name)
    return status.counters.get(name)


def _int(status: Status, name: str) -> int | None:
    value = _field(status, name)
    return value if type(value) is int else None


def _num(status: Status, name: str) -> float | None:
    value = _field(status, name)
    return float(value) if type(value) in (int, float) else None


def _str(status: Status, name: str) -> str | None:
    value = _field(status, name)
    return value if isinstance(value, str) else None


def _by_sensor(status: Status | None, name: str) -> Mapping[str, Any] | None:
    """A sink's per-sensor counter (`gaps_by_sensor`: {sensor: n}, every sensor it has seen);
    None when its heartbeat has none (an older build): then the sensors' numbers are null."""
    value = None if status is None else _field(status, f"{name}_by_sensor")
    if not isinstance(value, Mapping):
        return None
    return {k: v for k, v in value.items() if type(v) is int}


def _per_sensor(status: Status | None, name: str) -> tuple[int | float | None, Mapping[str, Any]]:
    """A writer/uplink counter that is a total today and may become {sensor: n}: (total, map)."""
    value = None if status is None else _field(status, name)
    if isinstance(value, Mapping):
        nums = {k: v for k, v in value.items() if type(v) in (int, float)}
        return sum(nums.values()), nums
    return (value if type(value) in (int, float) else None), {}


@dataclass(slots=True)
class _Proc:
    """The last heartbeat of one process, and when it came (local monotonic seconds)."""

    process: str
    ident: str
    required: bool
    last: Status | None = None
    received: float = 0.0
    first_seen: float = 0.0  # when this pid was first heard of: a lower bound of its uptime
    beats: int = 0
    rates: deque[tuple[int, int]] = field(default_factory=deque)  # (ts_ns, readings)

    def feed(self, status: Status, now: float) -> None:
        if self.last is None or self.last.pid != status.pid:
            self.first_seen = now
            self.rates.clear()
        elif _str(self.last, "session") != _str(status, "session"):
            self.rates.clear()
        self.last, self.received = status, now
        self.beats += 1
        readings = _int(status, "readings")
        if readings is not None:
            self.rates.append((status.ts_ns, readings))
            while self.rates and status.ts_ns - self.rates[0][0] > RATE_WINDOW_S * NS:
                self.rates.popleft()

    def rate(self) -> float | None:
        if len(self.rates) < 2:
            return None
        (t0, r0), (t1, r1) = self.rates[0], self.rates[-1]
        return (r1 - r0) / ((t1 - t0) / NS) if t1 > t0 else None

    def age_of(self, ts_ns: int | None, now: float) -> float | None:
        """Seconds since an event the process timed with its own clock (None if never)."""
        if self.last is None or not ts_ns:
            return None
        return max(0.0, (self.last.ts_ns - ts_ns) / NS + now - self.received)


@dataclass(slots=True)
class _Last:
    """The latest reading of a sensor seen on the bus (web only: heartbeats carry no values)."""

    amps: float
    watts: float
    ts_ns: int


class Health:
    """Feed it heartbeats (and readings); ask it `to_json(now)` for the whole picture."""

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self._procs: dict[tuple[str, str], _Proc] = {
            (p, i): _Proc(p, i, required) for p, i, required in expected.processes
        }
        self._last: dict[str, _Last] = {}

    def feed(self, status: Status, now: float) -> None:
        key = (status.process, status.ident)
        proc = self._procs.get(key)
        if proc is None:
            if len(self._procs) >= len(self.expected.processes) + MAX_EXTRA:
                return  # junk on the bus must not grow the model without bound
            proc = self._procs[key] = _Proc(status.process, status.ident, required=False)
        proc.feed(status, now)

    def feed_reading(self, r: Reading) -> None:
        if r.sensor_id in self._last or len(self._last) < len(self.expected.sensors) + MAX_EXTRA:
            self._last[r.sensor_id] = _Last(r.amps, r.watts, r.ts_ns)

    def beats(self, process: str, ident: str) -> int:
        proc = self._procs.get((process, ident))
        return 0 if proc is None else proc.beats

    def _stale_after(self, proc: _Proc) -> float:
        hb = self.expected.heartbeat_interval
        extra = self.expected.reader_timeout if proc.process == "reader" else 0.0
        return max(STALE_BEATS * hb, STALE_MIN_S) + extra

    def _down_reason(self, proc: _Proc, now: float) -> str | None:
        if proc.last is None:
            return "no heartbeat seen"
        if proc.last.state in DOWN_STATES:
            return f"state {proc.last.state}"
        silent = now - proc.received
        if silent > self._stale_after(proc):
            return f"no heartbeat for {silent:.1f}s"
        return None

    def _restarts(self) -> Mapping[str, Any]:
        sup = self._procs.get(("supervisor", "run"))
        value = None if sup is None or sup.last is None else _field(sup.last, "restarts")
        return value if isinstance(value, Mapping) else {}

    def _process_json(self, proc: _Proc, now: float, restarts: Mapping[str, Any]) -> Json:
        last = proc.last
        down = self._down_reason(proc, now)
        started = None if last is None else _int(last, "started_ns")
        uptime = proc.age_of(started, now) if started else None
        n = restarts.get(f"{proc.process} {proc.ident}", restarts.get(proc.process))
        return {
            "process": proc.process, "id": proc.ident, "required": proc.required,
            "up": down is None, "why_down": down,
            "state": None if last is None else last.state,
            "pid": None if last is None else last.pid,
            "uptime_s": uptime if uptime is not None else (
                None if last is None else now - proc.first_seen),
            "uptime_exact": uptime is not None,
            "beat_age_s": None if last is None else now - proc.received,
            "restarts": n if type(n) is int else None,
        }

    def _sensor_json(self, sensor: str, now: float, writer: _Proc | None,
                     per: Mapping[str, Mapping[str, Any]]) -> Json:
        proc = self._procs.get(("reader", sensor))
        hb = None if proc is None else proc.last
        up = proc is not None and self._down_reason(proc, now) is None
        age = None if proc is None or hb is None else proc.age_of(_int(hb, "last_reading_ns"), now)
        wlast = None if writer is None else writer.last
        last = self._last.get(sensor)
        energy = None if wlast is None else _field(wlast, "energy_wh")
        return {
            "up": up, "fresh": up and age is not None and age <= self.expected.stall_timeout,
            "connected": None if hb is None else _field(hb, "connected") is True,
            "session": None if hb is None else _str(hb, "session"),
            "readings": None if hb is None else _int(hb, "readings"),
            "rate": proc.rate() if proc is not None and up else None, "age_s": age,
            "bad_lines": None if hb is None else _int(hb, "bad_lines"),
            "timeouts": None if hb is None else _int(hb, "timeouts"),
            "reconnects": None if hb is None else _int(hb, "reconnects"),
            "gaps": per["gaps"].get(sensor),
            "lost": per["lost"].get(sensor),
            "problem": None if hb is None else _str(hb, "problem") or None,
            "waiting_for_port": None if hb is None else _field(hb, "waiting_for_port") is True,
            "energy_wh": energy.get(sensor) if isinstance(energy, Mapping) else None,
            "amps": None if last is None else last.amps,
            "watts": None if last is None else last.watts,
            "reading_ts_ns": None if last is None else last.ts_ns,
        }

    def _per_sensor_counts(self, wlast: Status | None, name: str) -> Mapping[str, Any]:
        """{sensor: n} of the writer's gaps or lost: 0 for every expected sensor once the
        writer publishes them per sensor (none seen is none lost); else what a total-as-map
        counter says, else nothing (null)."""
        by = _by_sensor(wlast, name)
        if by is None:
            return _per_sensor(wlast, name)[1]
        return {**dict.fromkeys(self.expected.sensors, 0), **by}

    def _writer_json(self, proc: _Proc | None) -> Json | None:
        if proc is None or proc.last is None:
            return None
        s = proc.last
        return {
            "current_file": _str(s, "current_file"), "bytes_in_file": _int(s, "bytes_in_file"),
            "rows": _int(s, "rows"), "gaps": _per_sensor(s, "gaps")[0],
            "missing": _per_sensor(s, "missing")[0], "lost": _per_sensor(s, "lost")[0],
            "bad_messages": _int(s, "bad_messages"), "dropped": _int(s, "dropped"),
        }

    @staticmethod
    def _storage_json(proc: _Proc | None) -> Json | None:
        """What the data files hold, from the writer's heartbeat: the retention's deletions
        since the writer started and the oldest data kept (docs/writer.md, Retention)."""
        if proc is None or proc.last is None:
            return None
        s = proc.last
        return {
            "files_deleted": _int(s, "files_deleted"), "bytes_deleted": _int(s, "bytes_deleted"),
            "oldest_data": _str(s, "oldest_data") or None,
        }

    def _uplink_json(self, proc: _Proc | None, now: float) -> Json | None:
        if proc is None or proc.last is None:
            return None
        s = proc.last
        outputs = _field(s, "outputs")
        return {
            "spool_depth": _int(s, "spool_depth"), "sent": _int(s, "sent"),
            "last_success_ns": _int(s, "last_success_ns"),
            "last_success_age_s": proc.age_of(_int(s, "last_success_ns"), now),
            "last_error": _str(s, "last_error") or None, "lost": _per_sensor(s, "lost")[0],
            "dead_lettered": _int(s, "dead_lettered"),
            "outputs": dict(outputs) if isinstance(outputs, Mapping) else None,
        }

    def to_json(self, now: float) -> Json:
        """The whole picture at `now`: the shape of `powmon status --json`, /api/status and
        the metrics (documented in docs/web.md)."""
        restarts = self._restarts()
        procs = {
            process_name(p.process, p.ident): self._process_json(p, now, restarts)
            for p in self._procs.values()
        }
        writer = self._procs.get(("writer", "writer"))
        wlast = None if writer is None else writer.last
        per = {name: self._per_sensor_counts(wlast, name) for name in ("gaps", "lost")}
        sensors = {s: self._sensor_json(s, now, writer, per) for s in self.expected.sensors}
        problems = [
            f"{name} down: {p['why_down']}" for name, p in procs.items()
            if p["required"] and not p["up"]
        ]
        for sensor, s in sensors.items():
            if s["up"] and not s["fresh"]:
                why = f": {s['problem']}" if s["problem"] else ""
                problems.append(
                    f"sensor {sensor}: no reading yet{why}" if s["age_s"] is None else
                    f"sensor {sensor}: no reading for {s['age_s']:.1f}s "
                    f"(STALL_TIMEOUT {self.expected.stall_timeout:g}s){why}"
                )
        return {
            "ok": not problems, "problems": problems, "processes": procs, "sensors": sensors,
            "writer": self._writer_json(writer), "storage": self._storage_json(writer),
            "uplink": self._uplink_json(self._procs.get(("uplink", "uplink")), now),
            "heartbeat_interval": self.expected.heartbeat_interval,
            "stall_timeout": self.expected.stall_timeout,
        }
