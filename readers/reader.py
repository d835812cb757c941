"""The reader process: one serial port, one sensor, readings onto the bus until told to stop.

Shape: connect (open, sync through boot chatter, identify, configure) with capped exponential
backoff; then poll, one request and one answer per reading; a bad answer is counted, logged
rate-limited and followed by a drain; a vanished device (SerialException, OSError, or too long a
silence) closes the port and goes back to connecting. The heartbeat is sent from these same
loops, connected or not, so a supervisor can tell 'alive but silent' from 'dead'.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Final

import serial
import zmq
from zmq.backend import zmq_poll

from powmon.common.backoff import backoff
from powmon.common.conversion import Calibration
from powmon.common.curve import Curve
from powmon.common.errors import DeviceError
from powmon.common.logs import RateLimiter
from powmon.common.replay import ReplayServer, replay_bind_endpoint
from powmon.common.schema import STATE_DISCONNECTED, STATE_RUNNING, STATE_STOPPED
from powmon.common.settings import Settings
from powmon.common.transport import Heartbeat, pub_socket, wait_for_broker
from powmon.common.zap import Gate
from powmon.readers.handshake import Agreed, NoAnswer, Wanted, handshake
from powmon.readers.link import BadAnswer, Link, open_port, parse_answer, read_command
from powmon.readers.schedule import Schedule
from powmon.readers.session import Counters, Emitter, new_session_id

log = logging.getLogger(__name__)

RECONNECT_INITIAL: Final = 0.2
RECONNECT_CAP: Final = 5.0  # the original retried every 5 s; a replugged board is back by then
MAX_SILENT: Final = 10  # consecutive unanswered requests before the device counts as gone
SUMMARY_INTERVAL: Final = 60.0
LOG_PERIOD: Final = 10.0  # at most one warning per kind per this many seconds
BROKER_WAIT: Final = 1.0  # longest wait at start for the bus, so seq 0 is not lost to PUB
SERVE_EVERY: Final = 0.005  # how often the hot loop looks for replay requests
IDLE_STEP: Final = 0.05  # longest wait between replay checks (slow polling, reconnecting)
# Below this period the schedule waits on the stop event (microsecond timeouts); at or above it
# on the replay socket (millisecond timeouts, rounded up: a request goes out < 1 ms late).
POLL_WAIT_MIN: Final = 0.002
_POLLIN: Final = int(zmq.POLLIN)
_Poll = list[tuple[zmq.Socket[bytes], int]]


class DeviceLost(DeviceError):
    """The device stopped answering at all; reopening the port usually resets it."""


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """Everything one reader needs, taken from the validated settings and the command line."""

    wanted: Wanted
    port: str
    baudrate: int
    polling_delay: float
    calibration: Calibration
    frontend: str
    hwm: int
    heartbeat_interval: float
    replay_buffer: int
    curve: Curve | None = None
    replay_ports: tuple[int, int] | None = None

    @property
    def sensor_id(self) -> str:
        return self.wanted.sensor_id

    @classmethod
    def from_settings(
        cls, settings: Settings, sensor_id: str, port: str | None = None
    ) -> ReaderConfig:
        """Raises SettingsError (naming the file and the known ids) for an unknown sensor."""
        s = settings.sensor(sensor_id)
        wanted = Wanted(
            sensor_id=s.sensor_id, read_command=read_command(s.channel), timeout=s.timeout,
            avg=s.avg, mode=s.mode, mains_hz=s.mains_hz, ac_cycles=s.ac_cycles,
            sync_seconds=Wanted.sync_budget(s.timeout),
        )  # fmt: skip
        return cls(
            wanted=wanted, port=port or s.port, baudrate=s.baudrate,
            polling_delay=s.polling_delay, calibration=Calibration.from_sensor(s),
            frontend=settings.broker_frontend, hwm=settings.hwm,
            heartbeat_interval=settings.heartbeat_interval,
            replay_buffer=settings.replay_buffer, curve=settings.curve,
            replay_ports=settings.replay_ports,
        )  # fmt: skip


class Reader:
    """The connect/poll state machine of one reader; sockets are handed in by run()."""

    def __init__(
        self,
        config: ReaderConfig,
        sock: zmq.Socket[bytes],
        stop: threading.Event,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.config = config
        self.stop = stop
        self.counters = Counters(session=new_session_id(), port=config.port)
        self.emitter = Emitter(
            sock, config.sensor_id, config.calibration, self.counters, config.replay_buffer
        )
        self.replay: ReplayServer | None = None
        if ctx is not None and config.replay_buffer > 0:
            self.replay = ReplayServer(
                ctx, config.sensor_id, self.counters.session, self.emitter.ring,
                replay_bind_endpoint(config.frontend), gate=gate, ports=config.replay_ports,
            )  # fmt: skip
            self.counters.replay = self.replay.endpoint
            self.counters.replay_key = self.replay.key
        self.heartbeat = Heartbeat(
            sock, "reader", config.sensor_id, config.heartbeat_interval, self.counters.snapshot,
            progress=self.counters.progress,
        )
        self._limiter = RateLimiter(LOG_PERIOD)
        self._schedule = Schedule(config.polling_delay)
        self._silent = 0
        self._next_summary = 0.0
        self._connected_once = False

    def run(self) -> None:
        cfg = self.config
        log.info("reader start sensor=%s port=%s session=%s endpoint=%s replay=%s",
                 cfg.sensor_id, cfg.port, self.counters.session, cfg.frontend,
                 self.counters.replay or "off")  # fmt: skip
        self._next_summary = time.monotonic() + SUMMARY_INTERVAL
        try:
            while not self.stop.is_set():
                connected = self._connect()
                if connected is None:
                    break
                self._session(*connected)
        finally:
            self.counters.connected = False
            self._serve()  # requests already queued get their answer
            self.heartbeat.beat(STATE_STOPPED, force=True)
            if self.replay is not None:
                self.replay.close()
            c = self.counters
            log.info("reader stop sensor=%s readings=%d bad_lines=%d timeouts=%d reconnects=%d",
                     cfg.sensor_id, c.readings, c.bad_lines, c.timeouts,
                     c.reconnects)  # fmt: skip

    def _session(self, link: Link, agreed: Agreed) -> None:
        """Poll one connected device until stopped or lost; always closes the port."""
        c = self.counters
        try:
            self._poll(link, agreed)
        except (serial.SerialException, OSError, DeviceLost) as err:
            c.disconnects += 1
            self._warn("lost", "sensor=%s port=%s device lost: %s; reconnecting",
                       self.config.sensor_id, self.config.port, err)  # fmt: skip
        finally:
            c.connected = False
            with contextlib.suppress(serial.SerialException, OSError):
                link.close()

    def _connect(self) -> tuple[Link, Agreed] | None:
        """Open and handshake, retrying with capped backoff; None once stopped."""
        cfg = self.config
        for delay in backoff(RECONNECT_INITIAL, RECONNECT_CAP):
            if self.stop.is_set():
                return None
            try:
                connected = self._open()
            except (serial.SerialException, OSError, NoAnswer) as err:
                self._warn("connect", "sensor=%s port=%s cannot connect: %s; retrying",
                           cfg.sensor_id, cfg.port, err)  # fmt: skip
            else:
                if connected is not None:
                    self._on_connected(connected[1])
                return connected
            if self._wait(delay):
                return None
        return None  # backoff() without attempts never ends; this satisfies the type checker

    def _open(self) -> tuple[Link, Agreed] | None:
        cfg = self.config
        try:
            port = open_port(cfg.port, cfg.baudrate, cfg.wanted.timeout)
        except (ValueError, TypeError) as err:
            raise DeviceError(  # a wrong name or option: retrying will not fix it
                f"cannot open serial port {cfg.port!r} for sensor {cfg.sensor_id!r}: {err}"
            ) from err
        link = Link(port, cfg.wanted.timeout, self.stop)
        agreed = None
        try:
            agreed = handshake(link, cfg.wanted, self.stop)
        finally:
            if agreed is None:
                with contextlib.suppress(serial.SerialException, OSError):
                    link.close()
        return None if agreed is None else (link, agreed)

    def _on_connected(self, agreed: Agreed) -> None:
        c = self.counters
        if self._connected_once:
            c.reconnects += 1
        self._connected_once = True
        c.connected = True
        c.firmware = agreed.firmware
        self._silent = 0
        self._log(logging.INFO, "connected", "sensor=%s port=%s connected firmware=%r "
                  "reconnects=%d", self.config.sensor_id, self.config.port,
                  agreed.firmware or "(no id)", c.reconnects)  # fmt: skip
        if agreed.first is not None:
            raw, ts_ns = agreed.first
            self.emitter.emit(raw, ts_ns, agreed.flags, agreed.convert)
        self.heartbeat.beat(force=True)

    def _poll(self, link: Link, agreed: Agreed) -> None:
        """The hot loop: one request, one answer, one published reading.

        When the next request is due at once (POLLING_DELAY 0, or behind schedule), it is
        written right after a good answer and before that answer is published, so converting,
        encoding and sending overlap the next round trip. Still one request in flight, and a
        reading's timestamp is still the moment its request was written.
        """
        stop, emitter, request = self.stop, self.emitter, self.config.wanted.read_command
        flags, convert = agreed.flags, agreed.convert
        chores_every = self.config.heartbeat_interval
        schedule = self._schedule
        schedule.restart(time.monotonic())
        next_chores = next_serve = 0.0
        replay = self.replay.sock if self.replay is not None else None
        poll = (
            [(replay, _POLLIN)] if replay is not None and schedule.period >= POLL_WAIT_MIN else None
        )
        pending = 0  # time_ns of the request in flight; 0: none
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_chores:
                next_chores = now + chores_every
                self._chores(now)
            if replay is not None and now >= next_serve:
                next_serve = now + SERVE_EVERY
                if int(replay.get(zmq.EVENTS)) & zmq.POLLIN:
                    self._serve()
            if not pending:
                if schedule.period:
                    wait = schedule.delay(now)
                    if wait > 0:
                        wait = min(wait, chores_every, IDLE_STEP)
                        next_serve = self._idle(poll, wait, now, next_serve)
                        continue
                    schedule.advance(now)
                pending = time.time_ns()
                link.send(request)
            ts_ns, pending = pending, 0
            line = link.read_line()
            try:
                raw = parse_answer(line)
            except BadAnswer as bad:
                self._bad_answer(link, bad)
                continue
            self._silent = 0
            pending = self._send_if_due(link, request)
            emitter.emit(raw, ts_ns, flags, convert)

    def _idle(self, poll: _Poll | None, wait: float, now: float, next_serve: float) -> float:
        """Wait for the next slot; returns when the replay socket is next due for a look.

        Waiting on the replay socket makes one wake-up both end the wait and see (and answer at
        once) a replay request, instead of a stop.wait plus a ZMQ_EVENTS check per reading.
        """
        if poll is None:
            self.stop.wait(wait)
            return next_serve
        if zmq_poll(poll, math.ceil(wait * 1000)):
            self._serve()
        return now + wait + SERVE_EVERY

    def _send_if_due(self, link: Link, request: bytes) -> int:
        """Write the next request now if it is already due; its time_ns, else 0."""
        schedule = self._schedule
        if schedule.period:
            now = time.monotonic()
            if schedule.delay(now) > 0:
                return 0
            schedule.advance(now)
        if self.stop.is_set():
            return 0
        ts_ns = time.time_ns()
        link.send(request)
        return ts_ns

    def _bad_answer(self, link: Link, bad: BadAnswer) -> None:
        if self.stop.is_set():
            return  # the read was cut short by the stop request, not by the device
        c = self.counters
        if bad.kind == "timeout":
            c.timeouts += 1
            self._silent += 1
            if self._silent >= MAX_SILENT:
                raise DeviceLost(f"no answer to {MAX_SILENT} requests in a row")
        else:
            c.bad_lines += 1
        self._warn(bad.kind, "sensor=%s bad answer %s (bad_lines=%d timeouts=%d)",
                   self.config.sensor_id, bad, c.bad_lines, c.timeouts)  # fmt: skip
        link.drain()

    def _chores(self, now: float) -> None:
        """Heartbeat and the periodic summary; called at most once per heartbeat interval."""
        c = self.counters
        c.skipped_slots = self._schedule.skipped
        self._serve()
        self.heartbeat.beat(STATE_RUNNING if c.connected else STATE_DISCONNECTED)
        if now >= self._next_summary:
            self._next_summary = now + SUMMARY_INTERVAL
            log.info("sensor=%s seq=%d readings=%d bad_lines=%d timeouts=%d reconnects=%d "
                     "connected=%s", self.config.sensor_id, c.seq, c.readings, c.bad_lines,
                     c.timeouts, c.reconnects, c.connected)  # fmt: skip

    def _wait(self, seconds: float) -> bool:
        """Wait, heartbeating; True as soon as stop is set."""
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            self._chores(now)
            left = deadline - now
            if left <= 0:
                return self.stop.is_set()
            if self.stop.wait(min(left, IDLE_STEP)):
                return True

    def _serve(self) -> None:
        """Answer queued replay requests; they never block, and a bad one is only counted."""
        if self.replay is not None:
            self.replay.serve_pending()

    def _warn(self, key: str, msg: str, *args: object) -> None:
        self._log(logging.WARNING, key, msg, *args)

    def _log(self, level: int, key: str, msg: str, *args: object) -> None:
        """Log at most once per LOG_PERIOD per key: a flapping port must not flood the log."""
        self._limiter.log(log, level, key, msg, *args)


def run(config: ReaderConfig, stop: threading.Event) -> None:
    """Sockets and the port live only inside this call (after spawn, never at import)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    curve = config.curve
    # CURVE across hosts: the replay socket admits only authorised keys (common.zap).
    gate = Gate(ctx, curve, "the replay socket") if curve and config.replay_buffer else None
    sock = pub_socket(ctx, config.frontend, config.hwm, curve=curve)
    try:
        if not wait_for_broker(sock, stop, BROKER_WAIT, config.frontend, curve):
            log.debug("no broker at %s yet; starting anyway", config.frontend)
        Reader(config, sock, stop, ctx, gate).run()
    finally:
        sock.close()  # linger (transport.PUB_LINGER_MS) lets queued readings out
        if gate is not None:
            gate.close()
        ctx.term()
