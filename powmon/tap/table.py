"""`powmon tap` on a terminal: one live table row per sensor, refreshed in place (rich).

The figures come from what this tap hears: readings give the last amps and watts, the rate
and the age of the last reading; reader heartbeats give bad lines and reconnects. Energy is
integrated from the readings seen since the tap started, with base.energy, the same
integrator as `powmon report` (a reading this tap missed leaves a hole, counted as missing
coverage, never bridged beyond the sensor's limit).

With --status the table has one row per process instead (kind, id, pid, state, the age of
its last heartbeat and its plain counters), each heartbeat replacing the process's row.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from powmon.base.energy import EnergyMeter
from powmon.common.errors import SchemaError
from powmon.common.schema import decode_message
from powmon.common.schema.status import Status, decode_status
from powmon.tap.listen import Listening

if TYPE_CHECKING:
    from rich.table import Table

RATE_WINDOW_S: Final = 5.0
REFRESH_S: Final = 0.25


@dataclass(slots=True)
class SensorView:
    amps: float = 0.0
    watts: float = 0.0
    last_ns: int = 0
    arrivals: deque[float] = field(default_factory=deque)
    bad_lines: int | None = None
    reconnects: int | None = None
    state: str = ""


class LiveView:
    """The table's state; fed messages, rendered on demand."""

    def __init__(self, periods: dict[str, float], only: frozenset[str] = frozenset()) -> None:
        self.only = only  # --sensor: heartbeats of other readers are not shown
        self.sensors: dict[str, SensorView] = {}
        self.meter = EnergyMeter(periods)
        self.stored_wh: dict[str, float] = {}  # the writer's totals, kept across restarts
        self.readings = 0
        self.bad = 0

    @property
    def shown(self) -> int:
        """What --count counts: readings."""
        return self.readings

    def feed(self, frames: list[bytes], now: float) -> None:
        """One message off the bus; a bad one is only counted."""
        try:
            message = decode_message(frames)
            if isinstance(message, Status):
                status = message
                if status.process == "reader" and (not self.only or status.ident in self.only):
                    view = self.sensors.setdefault(status.ident, SensorView())
                    view.bad_lines = _int(status.counters.get("bad_lines"))
                    view.reconnects = _int(status.counters.get("reconnects"))
                    view.state = status.state
                elif status.process == "writer":
                    energy = status.counters.get("energy_wh")
                    if isinstance(energy, dict):
                        self.stored_wh = {k: float(v) for k, v in energy.items()
                                          if type(v) in (int, float)}
                return
        except SchemaError:
            self.bad += 1
            return
        readings = message.readings
        for r in readings:
            view = self.sensors.setdefault(r.sensor_id, SensorView())
            view.amps, view.watts, view.last_ns = r.amps, r.watts, r.ts_ns
            view.arrivals.append(now)
            self.meter.add(r.sensor_id, r.session, r.seq, r.ts_ns, r.watts)
        self.readings += len(readings)

    def table(self, now: float, wall_ns: int) -> Table:
        from rich.table import Table  # noqa: PLC0415 -- only a terminal needs rich

        table = Table(title="PowMon live (Ctrl-C to stop)", caption=self._caption())
        for name in (
            "sensor",
            "amps (A)",
            "power (W)",
            "energy (Wh)",
            "readings/s",
            "bad lines",
            "reconnects",
            "last reading",
        ):
            table.add_column(name, justify="left" if name == "sensor" else "right")
        totals = self.meter.snapshot()
        for sensor_id in sorted(self.sensors):
            v = self.sensors[sensor_id]
            while v.arrivals and v.arrivals[0] < now - RATE_WINDOW_S:
                v.arrivals.popleft()
            energy = self.stored_wh.get(sensor_id)
            if energy is None and sensor_id in totals:
                energy = totals[sensor_id].energy_wh
            age = f"{(wall_ns - v.last_ns) / 1e9:.1f} s ago" if v.last_ns else "none yet"
            table.add_row(
                sensor_id,
                f"{v.amps:.3f}",
                f"{v.watts:.2f}",
                "-" if energy is None else f"{energy:.4f}",
                f"{_rate(v.arrivals):.1f}",
                _text(v.bad_lines),
                _text(v.reconnects),
                age + (f" ({v.state})" if v.state not in ("", "running") else ""),
            )
        return table

    def _caption(self) -> str:
        bad = f"; {self.bad} bad message(s) skipped" if self.bad else ""
        if self.stored_wh:
            return f"energy: the writer's totals, kept across restarts{bad}"
        return f"energy counted from the readings this tap saw since it started{bad}"


def _rate(arrivals: deque[float]) -> float:
    """Readings per second over the recent window (the time they span, once there are two)."""
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
        return len(arrivals) / RATE_WINDOW_S
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


class StatusView:
    """--status on a terminal: one row per process (kind and id), its last heartbeat."""

    def __init__(self, only: frozenset[str] = frozenset()) -> None:
        self.only = only  # --sensor: heartbeats of other readers are not shown
        self.beats: dict[tuple[str, str], tuple[Status, float]] = {}
        self.shown = 0
        self.bad = 0

    def feed(self, frames: list[bytes], now: float) -> None:
        try:
            status = decode_status(frames)
        except SchemaError:
            self.bad += 1
            return
        if status.process == "reader" and self.only and status.ident not in self.only:
            return
        self.beats[(status.process, status.ident)] = (status, now)
        self.shown += 1

    def table(self, now: float, wall_ns: int) -> Table:
        from rich.table import Table  # noqa: PLC0415 -- only a terminal needs rich

        bad = f"{self.bad} bad message(s) skipped; " if self.bad else ""
        table = Table(title="PowMon heartbeats (Ctrl-C to stop)",
                      caption=f"{bad}{self.shown} heartbeat(s) heard")
        rows = [
            (process, ident, str(status.pid), status.state, f"{now - at:.1f} s ago",
             " ".join(f"{k}={v}" for k, v in sorted(status.counters.items())
                      if isinstance(v, str | int | float)))
            for (process, ident), (status, at) in sorted(self.beats.items())
        ]
        names = ("process", "id", "pid", "state", "last heartbeat")
        widths = [max([len(name), *(len(r[i]) for r in rows)]) for i, name in enumerate(names)]
        for name, width in zip(names, widths, strict=True):
            table.add_column(name, justify="right" if name == "pid" else "left",
                             no_wrap=True, min_width=width)
        # The counters get what the terminal has left (rich would squeeze the other columns).
        room = max(10, shutil.get_terminal_size().columns - sum(widths) - 3 * len(names) - 4)
        table.add_column("counters", no_wrap=True, overflow="ellipsis")
        for row in rows:
            counters = row[-1] if len(row[-1]) <= room else row[-1][: room - 1] + "…"
            table.add_row(*row[:-1], counters)
        return table


class _View(Protocol):
    @property
    def shown(self) -> int: ...

    def feed(self, frames: list[bytes], now: float) -> None: ...

    def table(self, now: float, wall_ns: int) -> Table: ...


def run_live(
    listening: Listening,
    sensors: frozenset[str],
    periods: dict[str, float],
    stop: threading.Event,
    count: int,
) -> int:
    """Show the sensors' table until stopped or `count` readings were seen; return how many
    were."""
    return _show(listening, LiveView(periods, sensors), stop, count)


def run_status(
    listening: Listening, sensors: frozenset[str], stop: threading.Event, count: int
) -> int:
    """Show the heartbeats' table until stopped or `count` heartbeats were seen."""
    return _show(listening, StatusView(sensors), stop, count)


def _show(listening: Listening, view: _View, stop: threading.Event, count: int) -> int:
    """Feed the view and redraw it in place; say a long silence (tap.listen) above it."""
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    sock = listening.sock
    with Live(
        view.table(time.monotonic(), time.time_ns()),
        console=Console(),
        auto_refresh=False,
        transient=False,
    ) as live:
        next_draw = 0.0
        while not stop.is_set() and (count == 0 or view.shown < count):
            listening.check()
            if sock.poll(int(REFRESH_S * 1000)):
                listening.heard()
                while sock.poll(0) and (count == 0 or view.shown < count):
                    view.feed(sock.recv_multipart(), time.monotonic())
            now = time.monotonic()
            if now >= next_draw:
                next_draw = now + REFRESH_S
                live.update(view.table(now, time.time_ns()), refresh=True)
        live.update(view.table(time.monotonic(), time.time_ns()), refresh=True)
    return view.shown
