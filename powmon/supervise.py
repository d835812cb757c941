"""`powmon run`: start the whole pipeline from one settings.yaml and keep it running.

The supervisor starts the processes of the one process table (powmon/processes.py) group by
group: the broker, then the writer (and the uplink when REMOTE_SAVE is true), and, once the
writer's heartbeat shows it is subscribed, one reader per sensor, so that the first readings of
a fresh start are not lost to ZeroMQ's slow-joiner effect. It restarts any child that dies, with
capped exponential backoff, and a reader that is alive but has taken no reading for
STALL_TIMEOUT seconds. A child that exits 2 before it ever ran (bad settings, its lock or port
taken) is not restarted: that is a misconfiguration, and a core process refusing to start
stops the pipeline with exit 2. On Ctrl-C/SIGTERM it stops the groups in reverse order
(readers first; the writer and uplink flush; the broker last).

Liveness never depends on the bus: each child reports its progress down its own lifeline
(common.lifeline), so a frozen broker delays heartbeats but never gets a healthy reader
restarted; and the lifeline is also how children stop when the supervisor itself is killed.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import click
import zmq

from powmon.children import Child, stop_group
from powmon.common.curve import Curve
from powmon.common.errors import PowmonError, SchemaError, SettingsError
from powmon.common.lifecycle import EXIT_USAGE, install_stop_handlers, load_or_exit
from powmon.common.lifeline import LifelineServer
from powmon.common.lock import holder, spool_lock, writer_lock
from powmon.common.logs import configure_logging
from powmon.common.options import CONTEXT_SETTINGS, config_option, log_level_option
from powmon.common.schema import MAX_GONE, ReaderEnd, decode_status
from powmon.common.settings import Settings
from powmon.common.transport import Heartbeat, pub_socket, sub_socket
from powmon.probes import endpoint_state
from powmon.processes import ProcessSpec, groups, pipeline
from powmon.readers.reader import ReaderConfig
from powmon.uplink.config import UplinkConfig
from powmon.web.config import WebConfig

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
STALL_KILL_GRACE_S = 3.0
ORPHAN_STEP_S = 1.0  # once this supervisor is gone, each group outlives the next by this
GONE_KEEP_S = 600.0
READY_TIMEOUT_S = 10.0
POLL_MS = 200


class Refused(PowmonError):
    """A core process exited 2 at start-up: the pipeline cannot run as configured."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    specs: tuple[ProcessSpec, ...]
    config_path: str
    frontend: str
    backend: str
    hwm: int
    heartbeat_interval: float
    stall_timeout: float
    restart_backoff_max: float
    curve: Curve | None

    @classmethod
    def from_settings(cls, settings: Settings) -> RunConfig:
        return cls(
            specs=pipeline(settings), config_path=str(settings.path),
            frontend=settings.broker_frontend, backend=settings.broker_backend,
            hwm=settings.hwm, heartbeat_interval=settings.heartbeat_interval,
            stall_timeout=settings.stall_timeout,
            restart_backoff_max=settings.restart_backoff_max, curve=settings.curve,
        )


class Supervisor:
    """Owns the children; one loop watches exits, lifelines and stalls."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        limit = config.restart_backoff_max
        self.groups = [
            [Child(s, s.argv(config.config_path), limit) for s in group]
            for group in groups(config.specs)
        ]
        self.children = [c for group in self.groups for c in group]
        self._by_id = {(c.spec.process, c.spec.ident): c for c in self.children}
        self.lifelines = LifelineServer()
        self.gone: deque[tuple[float, ReaderEnd]] = deque(maxlen=MAX_GONE)
        self.bad_status = 0

    def counters(self) -> dict[str, object]:
        return {
            "children": len(self.children),
            "running": sum(c.running for c in self.children),
            "restarts": {c.key: c.restarts for c in self.children},
            "bad_status": self.bad_status,
        }

    def run(self, stop: threading.Event) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        curve = self.config.curve
        status = sub_socket(ctx, self.config.backend, [b"status/"], self.config.hwm, curve=curve)
        pub = pub_socket(ctx, self.config.frontend, self.config.hwm, curve=curve)
        beat = Heartbeat(pub, "supervisor", "run", self.config.heartbeat_interval, self.counters,
                         gone=self._gone)
        try:
            for group in self.groups:
                if stop.is_set():
                    break  # Ctrl-C while an earlier group got ready: start nothing more
                for child in group:
                    self._start(child, time.monotonic())
                if any(c.spec.ready for c in group):
                    self._wait_ready(group, status, stop)
            while not stop.is_set():
                self._wait(status, POLL_MS)
                self._check(time.monotonic())
                beat.beat()
        finally:
            log.info("stopping pipeline")
            for group in reversed(self.groups):
                stop_group(group, STOP_GRACE_S)
            self.lifelines.close()
            status.close()
            pub.setsockopt(zmq.LINGER, 0)
            pub.close()
            ctx.term()
            log.info("pipeline stopped")

    def _gone(self) -> tuple[ReaderEnd, ...]:
        """Readers that ended lately, and how far they got: repeated in every heartbeat for
        GONE_KEEP_S, so that a sink that was behind still learns their sessions are over."""
        now = time.monotonic()
        while self.gone and now - self.gone[0][0] > GONE_KEEP_S:
            self.gone.popleft()
        return tuple(end for _, end in self.gone)

    def _start(self, child: Child, now: float) -> None:
        if child.token:
            self.lifelines.retire(child.token)
        later = sum(1 for g in self.groups if g[0].spec.order > child.spec.order)
        child.start(now, self.lifelines.issue(grace=ORPHAN_STEP_S * later))

    def _wait_ready(self, group: list[Child], status: zmq.Socket[bytes],
                    stop: threading.Event) -> None:
        """Until the group's `ready` children were heard on the bus (bounded): then the bus
        carries their subscriptions, and the next group's first messages reach them."""
        waiting = [c for c in group if c.spec.ready]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not stop.is_set() and time.monotonic() < deadline:
            if all(c.ready for c in waiting):
                return
            self._wait(status, 100)
            self._check(time.monotonic())
        if not stop.is_set():
            log.warning("no heartbeat from %s after %.0fs; starting the rest anyway",
                        ", ".join(c.key for c in waiting if not c.ready), READY_TIMEOUT_S)

    def _wait(self, status: zmq.Socket[bytes], timeout_ms: int) -> None:
        """Wait for the bus or a lifeline, then take what both have."""
        poller = zmq.Poller()
        poller.register(status, zmq.POLLIN)
        for sock in self.lifelines.sockets():
            poller.register(sock, zmq.POLLIN)
        poller.poll(timeout_ms)
        now = time.monotonic()
        tokens = {c.token: c for c in self.children}
        for beat in self.lifelines.read():
            child = tokens.get(beat.token)
            if child is not None:
                child.note_progress(beat, now)
        self._drain_status(status)

    def _drain_status(self, sock: zmq.Socket[bytes]) -> None:
        """Heartbeats on the bus: only to know a subscriber is listening (never liveness)."""
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                status = decode_status(frames)
            except SchemaError as err:
                self.bad_status += 1
                log.debug("dropped a bad status message: %s", err)
                continue
            child = self._by_id.get((status.process, status.ident))
            if child is not None and child.popen is not None and status.pid == child.popen.pid:
                child.ready = True

    def _check(self, now: float) -> None:
        for child in self.children:
            if child.popen is not None and child.restart_at is None and not child.running:
                self._ended(child, now)
                self._exited(child, now)
            elif child.stalled(now, self.config.stall_timeout):
                stop_group([child], STALL_KILL_GRACE_S)
                self._ended(child, now)
                child.schedule_restart(
                    now, f"stalled: no reading for {self.config.stall_timeout:.0f}s"
                )
            if child.restart_at is not None and now >= child.restart_at and child.popen is not None:
                self._start(child, now)

    def _ended(self, child: Child, now: float) -> None:
        """Remember how far an ended reader's session got, for the sinks (`_gone`)."""
        if child.session:
            self.gone.append((now, ReaderEnd(child.spec.ident, child.session, child.seq)))
            child.session = ""

    def _exited(self, child: Child, now: float) -> None:
        assert child.popen is not None  # noqa: S101 - _check only calls this for started children
        code = child.popen.returncode
        if not child.refused:
            child.schedule_restart(now, f"exited with code {code}")
            return
        if child.spec.core:
            raise Refused(f"{child.key} refused to start (exit {code}; its message is above)")
        child.restart_at = float("inf")  # a reader or the web page: the others go on
        log.error("%s refused to start (exit %d; its message is above); not restarting it",
                  child.key, code)


def _precheck(settings: Settings) -> None:
    """Refuse to start (exit 2) on what would make a child fail at every restart: the checks
    each process makes of its own configuration, beyond the settings file itself (the uplink's
    key and encrypted HOST, the readers' sensor entries, the web page's address and token), a
    pipeline already running on the same data root or spool, and a bus endpoint that is
    taken; each only for what this host runs."""
    running = {spec.process for spec in pipeline(settings)}
    _check_configs(settings, running)
    locks = [writer_lock(settings.data_root)] if "writer" in running else []
    if "uplink" in running:
        locks.append(spool_lock(settings.uplink.spool_path))
    for lock in locks:
        pid = holder(lock.path)
        if pid is not None:
            _refuse(f"already running: pid {pid or '?'}, {lock.what}")
    if "broker" not in running:
        return  # a host whose broker runs elsewhere: its endpoints are not ours to bind
    for endpoint in (settings.broker_frontend, settings.broker_backend):
        state = endpoint_state(endpoint)  # the same probe as check-config's
        if state != "free":
            _refuse(f"bus endpoint {endpoint} is not free ({state}): is another pipeline running?")


def _check_configs(settings: Settings, running: set[str]) -> None:
    try:
        for sensor in settings.sensors:
            ReaderConfig.from_settings(settings, sensor.sensor_id)
        if "uplink" in running:
            UplinkConfig.from_settings(settings)
        if "web" in running:
            WebConfig.from_settings(settings)
    except SettingsError as err:
        _refuse(str(err))


def _refuse(message: str) -> None:
    print(f"powmon: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


@click.command("run", context_settings=CONTEXT_SETTINGS)
@config_option
@log_level_option
def run_command(config_path: Path | None, log_level: int | None) -> None:
    """Start broker, writer, uplink and one reader per sensor, and keep them running."""
    settings = load_or_exit(config_path)
    configure_logging(settings.log_level if log_level is None else log_level, "powmon-run")
    _precheck(settings)
    settings.data_root.mkdir(parents=True, exist_ok=True)
    log.info(
        "powmon run: %d sensor(s), data in %s, bus %s -> %s",
        len(settings.sensors), settings.data_root, settings.broker_frontend,
        settings.broker_backend,
    )
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        Supervisor(RunConfig.from_settings(settings)).run(stop)
    except Refused as err:
        log.error("%s; stopping the pipeline", err)
        raise SystemExit(EXIT_USAGE) from None
