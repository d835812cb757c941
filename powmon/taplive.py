"""`powmon tap` on a terminal: one live table row per sensor, refreshed in place (rich).

The figures come from what this tap hears: readings give the last amps and watts, the rate
and the age of the last reading; reader heartbeats give bad lines and reconnects. Energy is
integrated from the readings seen since the tap started, with common.energy, the same
integrator as `powmon report` (a reading this tap missed leaves a hole, counted as missing
coverage, never bridged beyond the sensor's limit).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import zmq

from powmon.common.curve import Curve
from powmon.common.energy import EnergyMeter
from powmon.common.errors import SchemaError
from powmon.common.schema import (
    READING_PREFIX,
    STATUS_PREFIX,
    decode_readings,
    decode_status,
    reading_topic,
)
from powmon.common.transport import sub_socket

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

    def feed(self, frames: list[bytes], now: float) -> None:
        """One message off the bus; a bad one is only counted."""
        try:
            if frames[0].startswith(STATUS_PREFIX):
                status = decode_status(frames)
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
            readings = decode_readings(frames)
        except SchemaError:
            self.bad += 1
            return
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


def run_live(
    backend: str,
    sensors: tuple[str, ...],
    hwm: int,
    periods: dict[str, float],
    stop: threading.Event,
    count: int,
    curve: Curve | None,
) -> int:
    """Show the table until stopped or `count` readings were seen; return how many were."""
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    view = LiveView(periods, frozenset(sensors))
    topics = [reading_topic(s) for s in sensors] if sensors else [READING_PREFIX]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    status = [STATUS_PREFIX + b"reader/", STATUS_PREFIX + b"writer/"]
    sock = sub_socket(ctx, backend, [*topics, *status], hwm, curve=curve)
    console = Console()
    try:
        with Live(
            view.table(time.monotonic(), time.time_ns()),
            console=console,
            auto_refresh=False,
            transient=False,
        ) as live:
            next_draw = 0.0
            while not stop.is_set() and (count == 0 or view.readings < count):
                if sock.poll(int(REFRESH_S * 1000)):
                    while sock.poll(0) and (count == 0 or view.readings < count):
                        view.feed(sock.recv_multipart(), time.monotonic())
                now = time.monotonic()
                if now >= next_draw:
                    next_draw = now + REFRESH_S
                    live.update(view.table(now, time.time_ns()), refresh=True)
            live.update(view.table(time.monotonic(), time.time_ns()), refresh=True)
    finally:
        sock.close(linger=0)
        ctx.term()
    return view.readings
