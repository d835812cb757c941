"""The one table of PowMon's processes: what runs, in which order, and what to watch.

`powmon run` supervises these, `powmon deploy` writes them into supervisord and systemd
configuration, and the benchmarks start them; all three read this table, so a new process
or a new argument is added once and they cannot drift apart.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from powmon.common.settings import Settings


class Watch(enum.Enum):
    """How a supervisor judges that a process needs restarting."""

    EXIT = "exit"  # when it exits
    PROGRESS = "progress"  # also when it is alive but makes no progress (a silent reader)


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process of the pipeline.

    `order`: lower starts first and stops last; processes of the same order start and stop
    together. `process`/`ident` are what its heartbeat says it is. `ready` means the next
    order waits (bounded) for this one's first heartbeat, so that subscribers are listening
    before readers publish their first readings. `required`: the pipeline is not healthy
    without it (`powmon status`); the web page is not data acquisition.
    """

    key: str
    module: str
    args: tuple[str, ...]
    process: str
    ident: str
    order: int
    watch: Watch = Watch.EXIT
    ready: bool = False
    required: bool = True

    @property
    def core(self) -> bool:
        """The pipeline cannot run without it (broker, writer, uplink): when it refuses to
        start, `powmon run` stops. A reader or the web page that refuses is left stopped."""
        return self.required and self.order < READERS

    @property
    def unit(self) -> str:
        """A program/unit-safe name: 'powmon-reader-Lab_3__rack_2' for 'reader Lab 3, rack=2'."""
        return "powmon-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.key.replace(" ", "-", 1))

    def argv(self, config: str, python: str = sys.executable) -> tuple[str, ...]:
        return (python, "-m", self.module, *self.args, "--config", config)


BROKER: Final = 10
SINKS: Final = 20
VIEWS: Final = 30  # subscribers that only show (the web page): up before readers, down first
READERS: Final = 40


def uplink_wanted(settings: Settings) -> bool:
    """The uplink runs when it has an output (REMOTE_SAVE, MQTT_URL: Settings.uplink_outputs)."""
    return bool(settings.uplink_outputs)


def broker_here(settings: Settings) -> bool:
    """Whether this host runs the bus: always on a single host; across hosts, the host with
    CURVE_SERVER_KEY (a host with CURVE_SERVER_PUBLIC connects to a broker elsewhere)."""
    return settings.curve is None or settings.curve.broker_here


def pipeline(settings: Settings) -> tuple[ProcessSpec, ...]:
    """Every process one settings.yaml asks for, in start order: on a host whose broker runs
    elsewhere, its readers only (the writer, uplink and web page run where the broker is, or
    started by hand on any host: docs/hosts.md)."""
    return tuple(_specs(settings) if broker_here(settings) else _readers(settings))


def _specs(settings: Settings) -> Iterator[ProcessSpec]:
    yield ProcessSpec("broker", "powmon.broker", (), "broker", "broker", BROKER)
    yield ProcessSpec("writer", "powmon.writer", (), "writer", "writer", SINKS, ready=True)
    if uplink_wanted(settings):
        yield ProcessSpec("uplink", "powmon.uplink", (), "uplink", "uplink", SINKS)
    if settings.web_listen is not None:
        yield ProcessSpec("web", "powmon.web", (), "web", "web", VIEWS, required=False)
    yield from _readers(settings)


def _readers(settings: Settings) -> Iterator[ProcessSpec]:
    for s in settings.sensors:
        yield ProcessSpec(
            f"reader {s.sensor_id}", "powmon.readers",
            ("--port", s.port, "--sensor-id", s.sensor_id), "reader", s.sensor_id, READERS,
            watch=Watch.PROGRESS,
        )


def groups(specs: tuple[ProcessSpec, ...]) -> list[list[ProcessSpec]]:
    """The specs grouped by order, lowest first: start groups in this order, stop reversed."""
    out: dict[int, list[ProcessSpec]] = {}
    for spec in sorted(specs, key=lambda s: s.order):
        out.setdefault(spec.order, []).append(spec)
    return list(out.values())
