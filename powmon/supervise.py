"""`powmon run`: start the whole pipeline from one settings.yaml and keep it running.

The supervisor starts the broker, then the writer (and the uplink when REMOTE_SAVE is true),
waits until the writer's heartbeat shows it is subscribed, and only then starts one reader per
sensor, so the first readings of a fresh start are not lost to ZeroMQ's slow-joiner effect. It
restarts any child that dies, with capped exponential backoff, and a reader that is alive but
has produced no reading for STALL_TIMEOUT seconds ("running but silent"). On Ctrl-C/SIGTERM it
stops readers first, then the writer and uplink (which flush), then the broker.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import zmq

from powmon.children import Child, ChildSpec, module_argv, reader_argv, stop_group
from powmon.common.errors import SchemaError, SettingsError
from powmon.common.lifecycle import EXIT_USAGE, install_stop_handlers, load_or_exit
from powmon.common.logs import configure_logging
from powmon.common.options import CONTEXT_SETTINGS, config_option, log_level_option
from powmon.common.schema import Status, decode_status
from powmon.common.settings import Settings
from powmon.common.transport import Heartbeat, pub_socket, sub_socket
from powmon.readers.reader import ReaderConfig
from powmon.uplink.config import UplinkConfig

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
STALL_KILL_GRACE_S = 3.0
WRITER_READY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class RunConfig:
    broker: ChildSpec
    sinks: tuple[ChildSpec, ...]
    readers: tuple[ChildSpec, ...]
    frontend: str
    backend: str
    hwm: int
    heartbeat_interval: float
    stall_timeout: float
    restart_backoff_max: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RunConfig:
        cfg = str(settings.path)
        sinks = [ChildSpec("writer", module_argv("powmon.writer", cfg), "writer", "writer")]
        if settings.remote_save:
            sinks.append(ChildSpec("uplink", module_argv("powmon.uplink", cfg), "uplink", "uplink"))
        readers = tuple(
            ChildSpec(
                f"reader {s.sensor_id}",
                reader_argv(cfg, s.port, s.sensor_id),
                "reader",
                s.sensor_id,
                watch_stall=True,
            )
            for s in settings.sensors
        )
        broker_argv = module_argv("powmon.common.broker", cfg)
        return cls(
            broker=ChildSpec("broker", broker_argv, "broker", "broker"),
            sinks=tuple(sinks), readers=readers, frontend=settings.broker_frontend,
            backend=settings.broker_backend, hwm=settings.hwm,
            heartbeat_interval=settings.heartbeat_interval, stall_timeout=settings.stall_timeout,
            restart_backoff_max=settings.restart_backoff_max,
        )  # fmt: skip


class Supervisor:
    """Owns the children; one loop watches exits, heartbeats and stalls."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        limit = config.restart_backoff_max
        self.broker = Child(config.broker, limit)
        self.sinks = [Child(s, limit) for s in config.sinks]
        self.readers = [Child(s, limit) for s in config.readers]
        self.children = [self.broker, *self.sinks, *self.readers]
        self._by_id = {(c.spec.process, c.spec.ident): c for c in self.children}
        self.bad_status = 0

    def counters(self) -> dict[str, object]:
        return {
            "children": len(self.children),
            "running": sum(c.running for c in self.children),
            "restarts": {c.spec.key: c.restarts for c in self.children},
            "bad_status": self.bad_status,
        }

    def run(self, stop: threading.Event) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        status = sub_socket(ctx, self.config.backend, [b"status/"], self.config.hwm)
        pub = pub_socket(ctx, self.config.frontend, self.config.hwm)
        beat = Heartbeat(pub, "supervisor", "run", self.config.heartbeat_interval, self.counters)
        try:
            now = time.monotonic()
            for child in (self.broker, *self.sinks):
                child.start(now)
            self._wait_for_writer(status, stop)
            for child in self.readers:
                child.start(time.monotonic())
            while not stop.is_set():
                self._drain_status(status, timeout_ms=200)
                self._check(time.monotonic())
                beat.beat()
        finally:
            log.info("stopping pipeline")
            stop_group(self.readers, STOP_GRACE_S)
            stop_group(self.sinks, STOP_GRACE_S)
            stop_group([self.broker], STOP_GRACE_S)
            status.close()
            pub.setsockopt(zmq.LINGER, 0)
            pub.close()
            ctx.term()
            log.info("pipeline stopped")

    def _wait_for_writer(self, status: zmq.Socket[bytes], stop: threading.Event) -> None:
        writer = self._by_id[("writer", "writer")]
        deadline = time.monotonic() + WRITER_READY_TIMEOUT_S
        while not stop.is_set() and writer.last_count < 0 and time.monotonic() < deadline:
            self._drain_status(status, timeout_ms=100)
            self._check(time.monotonic())
        if writer.last_count < 0 and not stop.is_set():
            log.warning("no heartbeat from the writer after %.0fs; starting readers anyway",
                        WRITER_READY_TIMEOUT_S)  # fmt: skip

    def _drain_status(self, sock: zmq.Socket[bytes], timeout_ms: int) -> None:
        if not sock.poll(timeout_ms):
            return
        now = time.monotonic()
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._on_status(decode_status(frames), now)
            except SchemaError as err:
                self.bad_status += 1
                log.debug("dropped a bad status message: %s", err)

    def _on_status(self, status: Status, now: float) -> None:
        child = self._by_id.get((status.process, status.ident))
        if child is None or not child.running or child.popen is None:
            return
        if status.pid != child.popen.pid:
            return  # a heartbeat from a previous incarnation, still in flight
        if child.spec.watch_stall:
            readings = status.counters.get("readings")
            child.note_progress(readings if isinstance(readings, int) else -1, now)
        else:
            child.note_progress(child.last_count + 1, now)

    def _check(self, now: float) -> None:
        for child in self.children:
            if child.popen is not None and child.restart_at is None and not child.running:
                child.schedule_restart(now, f"exited with code {child.popen.returncode}")
            elif child.stalled(now, self.config.stall_timeout):
                stop_group([child], STALL_KILL_GRACE_S)
                child.schedule_restart(
                    now, f"stalled: no reading for {self.config.stall_timeout:.0f}s"
                )
            if child.restart_at is not None and now >= child.restart_at and child.popen is not None:
                child.start(now)


def _precheck(settings: Settings) -> None:
    """Refuse to start (exit 2) on what would make a child fail at every restart: the checks
    each process makes of its own configuration, beyond the settings file itself (the uplink's
    key and encrypted HOST, the readers' sensor entries)."""
    try:
        for sensor in settings.sensors:
            ReaderConfig.from_settings(settings, sensor.sensor_id)
        if settings.remote_save:
            UplinkConfig.from_settings(settings)
    except SettingsError as err:
        print(f"powmon: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


@click.command("run", context_settings=CONTEXT_SETTINGS)
@config_option
@log_level_option
def run_command(config_path: Path | None, log_level: int | None) -> None:  # fmt: skip
    """Start broker, writer, uplink and one reader per sensor, and keep them running."""
    settings = load_or_exit(config_path)
    configure_logging(settings.log_level if log_level is None else log_level, "powmon-run")
    _precheck(settings)
    settings.data_root.mkdir(parents=True, exist_ok=True)
    log.info(
        "powmon run: %d sensor(s), data in %s, bus %s -> %s",
        len(settings.sensors), settings.data_root, settings.broker_frontend,
        settings.broker_backend,
    )  # fmt: skip
    stop = threading.Event()
    install_stop_handlers(stop)
    Supervisor(RunConfig.from_settings(settings)).run(stop)
