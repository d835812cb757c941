"""`powmon run`: start the whole pipeline from one settings.yaml and keep it running.

The supervisor starts the processes of the one process table (base/processes.py) group by
group: the broker, then the writer (and the uplink when REMOTE_SAVE is true), and, once the
writer's heartbeat shows it is subscribed, one reader per sensor, so that the first readings of
a fresh start are not lost to ZeroMQ's slow-joiner effect. It restarts any child that dies, with
capped exponential backoff, and a reader that is alive but has taken no reading for
STALL_TIMEOUT seconds (not one whose lifeline says it is retrying a port that cannot be
opened: it backs off by itself, and a restart would only start a new, empty session). A
child that exits 2 before it ever ran (bad settings, its lock or port taken) is not
restarted: that is a misconfiguration, and a core process refusing to start stops the
pipeline with exit 2. On Ctrl-C/SIGTERM it stops the groups in reverse order
(readers first; the writer and uplink flush; the broker last).

Liveness never depends on the bus: each child reports its progress down its own lifeline
(common.lifeline), so a frozen broker delays heartbeats but never gets a healthy reader
restarted; and the lifeline is also how children stop when the supervisor itself is killed.

This module is long because the Supervisor's loop (start in groups, wait for readiness, watch
heartbeats and lifelines, restart, settle and stop in order) is one piece of timing whose
steps share their deadlines; the checks before a start are in supervisor.precheck.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import click
import zmq

from powmon.base.processes import BROKER, READERS, SINKS, ProcessSpec, Watch, groups, pipeline
from powmon.common import publishmark
from powmon.common.curvezmq import Curve
from powmon.common.errors import PowmonError, SchemaError
from powmon.common.lifeline import LifelineServer
from powmon.common.logs import configure_logging
from powmon.common.options import CONTEXT_SETTINGS, config_option, log_level_option
from powmon.common.runtime import (
    EXIT_USAGE,
    Stop,
    install_stop_handlers,
    load_or_exit,
    wake_fd,
)
from powmon.common.schema.status import MAX_GONE, ReaderEnd, decode_status, status_topic
from powmon.common.settings import Settings
from powmon.common.transport import Heartbeat, pub_socket, sub_socket
from powmon.supervisor.children import Child, stop_group
from powmon.supervisor.precheck import precheck

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
STALL_KILL_GRACE_S = 3.0
ORPHAN_STEP_S = 1.0  # once this supervisor is gone, each group outlives the next by this
GONE_KEEP_S = 600.0
MARKS_DIR = "marks"  # in LOCAL_DATA_ROOT: the readers' publish marks (common/publishmark.py)
READY_TIMEOUT_S = 10.0
SETTLE_S = 5.0  # at a stop, how long the readers wait for the sinks to be listening and whole
POLL_MS = 200  # the longest wait when a stop cannot wake it (a plain Event)


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
    marks: Path | None = None  # the readers' publish marks; None: a folder of this run's own

    @classmethod
    def from_settings(cls, settings: Settings) -> RunConfig:
        return cls(
            specs=pipeline(settings), config_path=str(settings.path),
            frontend=settings.broker_frontend, backend=settings.broker_backend,
            hwm=settings.hwm, heartbeat_interval=settings.heartbeat_interval,
            stall_timeout=settings.stall_timeout,
            restart_backoff_max=settings.restart_backoff_max, curve=settings.curve,
            marks=settings.data_root / MARKS_DIR,
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
        # The readers' publish marks, one file per sensor, kept in the data root from one run
        # to the next: a run killed with -9 (or one whose last words some sink missed) leaves
        # them, and the next run reports those sessions' ends first (_inherit).
        self._own_marks = config.marks is None
        self._marks = (Path(tempfile.mkdtemp(prefix="powmon-run-")) if config.marks is None
                       else config.marks)
        self._stop_fd: int | None = None  # set by run(): a Stop's descriptor wakes the wait
        self._listening = True  # subscribed to status/ (run() subscribes at start)
        self.gone: deque[tuple[float, ReaderEnd]] = deque(maxlen=MAX_GONE)
        self.bad_status = 0
        self._inherit()

    def _mark_of(self, child: Child) -> Path:
        return self._marks / f"reader-{child.spec.ident.encode().hex()}.mark"

    def _inherit(self) -> None:
        """The sessions the previous run's readers left in their marks are over: report them
        like any ended reader's, before a new reader overwrites its mark. A sink that stored
        or named all of such a session does nothing with it; one that missed its tail (its
        readers stopped or died while it was down) names it."""
        self._marks.mkdir(parents=True, exist_ok=True)
        now = time.monotonic()
        for child in self.children:
            if child.spec.order == READERS:
                found = publishmark.read(self._mark_of(child))
                if found is not None:
                    self.gone.append((now, ReaderEnd(child.spec.ident, *found)))

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
        # The sinks' heartbeats always (a stop waits for them to settle), everyone's while a
        # child is not known to be subscribed yet (_listen).
        sinks = {status_topic(c.spec.process, c.spec.ident) for c in self.children
                 if c.spec.order == SINKS}
        status = sub_socket(ctx, self.config.backend, [b"status/", *sorted(sinks)],
                            self.config.hwm, curve=curve)
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
            self._stop_fd = wake_fd(stop)
            while not stop.is_set():
                self._wait(status, self._due_ms(beat))
                self._check(time.monotonic())
                beat.beat()
        finally:
            log.info("stopping pipeline")
            self._stop_fd = None  # the stop is set: its byte would wake every wait at once
            self._settle(status)
            for group in reversed(self.groups):
                stop_group(group, STOP_GRACE_S)
            self.lifelines.close()
            if self._own_marks:
                shutil.rmtree(self._marks, ignore_errors=True)
            status.close()
            pub.setsockopt(zmq.LINGER, 0)
            pub.close()
            ctx.term()
            log.info("pipeline stopped")

    def _settle(self, status: zmq.Socket[bytes]) -> None:
        """Before the readers stop, let the sinks hear their last words (bounded): a sink
        waiting to be restarted is started now, and the readers stop once every sink was
        heard since its start with no hole left to fill. A writer restarted just before a
        stop would otherwise miss the readers' last heartbeats, and with them the news of
        what it still lacked."""
        if not any(c.running for c in self.children if c.spec.order == READERS):
            return  # nobody's last words to hear
        # The broker too: readers stopped while it is being restarted would send their last
        # readings and words into a bus that some sinks have not rejoined yet.
        core = [c for c in self.children if c.spec.order in (BROKER, SINKS) and c.popen is not None]
        now = time.monotonic()
        for child in core:  # the broker first: the table is in start order
            if not child.running and child.restart_at not in (None, float("inf")):
                self._start(child, now)
        deadline = now + SETTLE_S
        while time.monotonic() < deadline:
            if all(c.ready and not c.recovering for c in core if c.running):
                return
            self._wait(status, 50)
        log.warning("stopping although %s did not settle within %.0fs",
                    ", ".join(c.key for c in core if not c.ready or c.recovering), SETTLE_S)

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
        mark = None
        if child.spec.order == READERS:
            mark = self._mark_of(child)
        if child.spec.order == BROKER:
            # A new broker: a sink counts as listening again only once heard through it (a
            # sink's heartbeat comes over the bus), so a stop waits for that (_settle).
            for sink in self.children:
                if sink.spec.order == SINKS:
                    sink.ready = False
        child.start(now, self.lifelines.issue(grace=ORPHAN_STEP_S * later), mark)

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

    def _due_ms(self, beat: Heartbeat) -> int:
        """Until the next thing to do: the heartbeat, a restart, a reader's stall deadline.
        A child's exit needs no deadline: its lifeline's end wakes the poll (one that dies
        before its lifeline connected is seen at the next heartbeat)."""
        now = time.monotonic()
        due = beat.due_in(now)
        stall = self.config.stall_timeout
        for child in self.children:
            if child.restart_at is not None:
                due = min(due, child.restart_at - now)
            elif child.spec.watch is Watch.PROGRESS and child.running:
                due = min(due, max(child.last_progress, child.started_at) + stall - now)
        if self._stop_fd is None:
            due = min(due, POLL_MS / 1000)
        return max(0, math.ceil(due * 1000))

    def _wait(self, status: zmq.Socket[bytes], timeout_ms: int) -> None:
        """Wait for the bus, a lifeline or a stop, then take what the bus and lifelines have."""
        poller = zmq.Poller()
        poller.register(status, zmq.POLLIN)
        for sock in self.lifelines.sockets():
            poller.register(sock, zmq.POLLIN)
        if self._stop_fd is not None:
            poller.register(self._stop_fd, zmq.POLLIN)
        poller.poll(timeout_ms)
        now = time.monotonic()
        tokens = {c.token: c for c in self.children}
        for beat in self.lifelines.read():
            child = tokens.get(beat.token)
            if child is not None:
                child.note_progress(beat, now)
        self._drain_status(status)
        self._listen(status, any(c.running and not c.ready for c in self.children))

    def _listen(self, status: zmq.Socket[bytes], on: bool) -> None:
        """Hear every process's heartbeats only while a child is not known to be subscribed
        yet (the sinks' always): liveness comes down the lifelines, and a pipeline at rest
        should not wake its supervisor for every heartbeat of every process."""
        if on != self._listening:
            status.setsockopt(zmq.SUBSCRIBE if on else zmq.UNSUBSCRIBE, b"status/")
            self._listening = on

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
                recovering = status.counters.get("recovering", 0)
                child.recovering = recovering if isinstance(recovering, int) else 0

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
        """Remember how far an ended reader's session got, for the sinks (`_gone`): its
        publish mark, exact up to the kill, else (torn, or none) its last lifeline beat."""
        ends = {child.session: child.seq} if child.session else {}
        found = publishmark.read(child.mark) if child.mark is not None else None
        if found is not None:
            ends[found[0]] = max(found[1], ends.get(found[0], 0))
        for session, seq in ends.items():
            self.gone.append((now, ReaderEnd(child.spec.ident, session, seq)))
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


@click.command("run", context_settings=CONTEXT_SETTINGS)
@config_option
@log_level_option
def run_command(config_path: Path | None, log_level: int | None) -> None:
    """Start the whole pipeline from one settings.yaml and keep it running.

    Settings are checked first: a mistake in the file stops here with exit 2, before anything
    starts (`powmon check-config` lists every mistake and tests the serial ports).

    \b
    What starts, in order:
      1. the broker (the bus, on BROKER_FRONTEND / BROKER_BACKEND);
      2. the writer, and the uplink only when an output is configured
         (REMOTE_SAVE: true, or MQTT_URL set);
      3. the web page only when WEB_LISTEN is set;
      4. once the writer is listening, one reader per sensor in SENSORS.

    On a host whose broker runs elsewhere (CURVE_SERVER_PUBLIC set), only its readers.

    A child that dies is restarted with capped backoff, as is a reader that takes no reading
    for STALL_TIMEOUT seconds; a reader waiting for its port to appear retries by itself and
    is left running (`powmon status` says why it has no readings).

    Data goes to CSV files named after LOCAL_DATA_FILE in LOCAL_DATA_ROOT (a relative path is
    taken from the settings file's folder, not the working directory), a new file every
    FILE_SIZE_LIMIT bytes.

    Stop with Ctrl-C or SIGTERM: readers stop first, the writer and uplink flush, the broker
    stops last.

    \b
    Exit codes:
      0 stopped cleanly (Ctrl-C or SIGTERM)
      1 crashed (the log line says why)
      2 bad settings, a pipeline already running on this data root or
        spool, a bus endpoint taken, or a broker, writer or uplink that
        refused to start
    """
    settings = load_or_exit(config_path)
    configure_logging(settings.log_level if log_level is None else log_level, "powmon-run")
    precheck(settings)
    settings.data_root.mkdir(parents=True, exist_ok=True)
    log.info(
        "powmon run: %d sensor(s), data in %s, bus %s -> %s",
        len(settings.sensors), settings.data_root, settings.broker_frontend,
        settings.broker_backend,
    )
    stop = Stop()
    install_stop_handlers(stop)
    try:
        Supervisor(RunConfig.from_settings(settings)).run(stop)
    except Refused as err:
        log.error("%s; stopping the pipeline", err)
        raise SystemExit(EXIT_USAGE) from None
