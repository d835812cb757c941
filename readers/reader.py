"""The reader process: one serial port, one sensor, readings onto the bus until told to stop.

Shape: connect (handshake.open_device: open, sync through boot chatter, identify, configure)
with capped exponential backoff; then read the device in one of two modes until stopped or
lost: stream mode (streaming.py: the board samples on its timer and sends frames) when STREAM
and the device allow it, else request/answer (polling.py: a `read` per reading, pipelined
where the device queues requests). Each mode's loop gets a narrow context (context.py), not
this Reader, and publishes through the one Emitter (emitter.py). A bad answer is counted,
logged rate-limited and followed by a drain; a vanished device (SerialException, OSError, a
DeviceError, too long a silence) closes the port and goes back to connecting. The heartbeat
is sent from these same loops, connected or not, so a supervisor can tell 'alive but silent'
from 'dead'.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import serial
import zmq

from powmon.common import publishmark
from powmon.common.backoff import backoff
from powmon.common.curvezmq import Curve
from powmon.common.errors import DeviceError, SettingsError
from powmon.common.replay import ReplayServer, replay_bind_endpoint
from powmon.common.schema.status import STATE_DISCONNECTED, STATE_RUNNING, STATE_STOPPED
from powmon.common.settings import Settings
from powmon.common.transport import Heartbeat, pub_socket, wait_for_broker
from powmon.common.zap import Gate
from powmon.readers.context import Board, Context, LimitedLog, ModeSettings
from powmon.readers.conversion import Calibration
from powmon.readers.counters import Counters, new_session_id
from powmon.readers.emitter import Batch, Emitter
from powmon.readers.handshake import Agreed, NoAnswer, Wanted, open_device
from powmon.readers.link import BadPort, Link, PortUnavailable, read_command
from powmon.readers.polling import Poller
from powmon.readers.schedule import Schedule
from powmon.readers.sleeper import Sleeper
from powmon.readers.streaming import NoStream, Streamer

log = logging.getLogger(__name__)

RECONNECT_INITIAL: Final = 0.2
RECONNECT_CAP: Final = 5.0  # the original retried every 5 s; a replugged board is back by then
SUMMARY_INTERVAL: Final = 60.0
LOG_PERIOD: Final = 10.0  # at most one warning per kind per this many seconds
BROKER_WAIT: Final = 1.0  # longest wait at start for the bus, so seq 0 is not lost to PUB


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
    channel: int | None = None
    stream: str = "off"  # STREAM: auto | on | off
    stream_rate: int | None = None  # `stream HZ` wanted; 0: the device's highest (SensorSettings)
    read_pipeline: int = 1  # READ_PIPELINE: requests in flight in request/answer mode
    publish_interval: float = 0.0  # PUBLISH_INTERVAL: longest a reading is held (0: none)
    settings_path: Path = Path("settings.yaml")  # for messages naming a setting

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
        )
        return cls(
            wanted=wanted, port=port or s.port, baudrate=s.baudrate,
            polling_delay=s.polling_delay, calibration=Calibration.from_sensor(s),
            frontend=settings.broker_frontend, hwm=settings.hwm,
            heartbeat_interval=settings.heartbeat_interval,
            replay_buffer=settings.replay_buffer, curve=settings.curve,
            replay_ports=settings.replay_ports,
            channel=s.channel, stream=s.stream,
            stream_rate=s.stream_rate, read_pipeline=s.read_pipeline,
            publish_interval=s.publish_interval, settings_path=settings.path,
        )


def wants_stream(config: ReaderConfig, agreed: Agreed) -> bool:
    """Whether to stream from this device: STREAM off never, auto when the device says it can
    (and the period is one a stream can have), on always, or SettingsError when it cannot."""
    if config.stream == "off" or (config.stream == "auto" and config.stream_rate is None):
        return False
    if agreed.streams:
        return True
    if config.stream == "on":
        raise SettingsError(
            f"{config.settings_path}: SENSORS[{config.sensor_id}].STREAM: is 'on', but the "
            f"device on {config.port!r} does not stream (id answered "
            f"{agreed.firmware or 'nothing'!r}); flash newer firmware, or use STREAM: auto"
        )
    return False


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
        self.mark = publishmark.attach()
        self.emitter = Emitter(
            sock, config.sensor_id, config.calibration, self.counters, config.replay_buffer,
            config.publish_interval, mark=self.mark.write if self.mark is not None else None,
        )
        self.replay: ReplayServer | None = None
        if ctx is not None and config.replay_buffer > 0:
            self.replay = ReplayServer(
                ctx, config.sensor_id, self.counters.session, self.emitter.ring,
                replay_bind_endpoint(config.frontend), gate=gate, ports=config.replay_ports,
            )
            self.counters.replay = self.replay.endpoint
            self.counters.replay_key = self.replay.key
        self.sleeper = Sleeper(self.replay, stop)
        self.heartbeat = Heartbeat(
            sock, "reader", config.sensor_id, config.heartbeat_interval, self.counters.snapshot,
            progress=self.counters.progress,
        )
        self.limiter = LimitedLog(log, LOG_PERIOD)
        self.schedule = Schedule(config.polling_delay)
        self.board = Board()  # one board per port: what is known of it outlasts a reconnect
        self._mode_settings = ModeSettings(
            config.wanted, config.heartbeat_interval, config.read_pipeline, config.stream_rate,
            config.channel, config.baudrate,
        )
        self._next_summary = 0.0
        self._connected_once = False

    def run(self) -> None:
        cfg = self.config
        log.info("reader start sensor=%s port=%s session=%s endpoint=%s replay=%s",
                 cfg.sensor_id, cfg.port, self.counters.session, cfg.frontend,
                 self.counters.replay or "off")
        self._next_summary = time.monotonic() + SUMMARY_INTERVAL
        try:
            while not self.stop.is_set():
                connected = self._connect()
                if connected is None:
                    break
                self._session(*connected)
        finally:
            self.counters.connected = False
            self.emitter.flush()  # what is held goes before the last heartbeat
            self.serve()  # requests already queued get their answer
            self.heartbeat.beat(STATE_STOPPED, force=True)
            if self.replay is not None:
                self.replay.close()
            c = self.counters
            log.info("reader stop sensor=%s readings=%d bad_lines=%d timeouts=%d reconnects=%d",
                     cfg.sensor_id, c.readings, c.bad_lines, c.timeouts,
                     c.reconnects)

    def context(self, link: Link) -> Context:
        """What a mode's loop gets of this reader while `link` is connected."""
        return Context(
            link, self.emitter, self.board, self.counters, self.stop, self.sleeper,
            self.schedule, self._mode_settings, self.limiter, self.chores,
        )

    def _session(self, link: Link, agreed: Agreed, stream: bool) -> None:
        """Read one connected device until stopped or lost; always closes the port."""
        c = self.counters
        ctx = self.context(link)
        try:
            if stream and self._stream(ctx, agreed):
                return
            c.mode, c.stream_hz = "poll", 0
            Poller(ctx, agreed).run()
        except (serial.SerialException, OSError, DeviceError) as err:
            if self.stop.is_set():  # an answer cut short by the stop itself: no device lost
                log.debug("sensor=%s stopped while waiting: %s", self.config.sensor_id, err)
                return
            c.disconnects += 1
            c.problem = f"device lost: {err}"
            self.limiter.warn(
                "lost", "sensor=%s port=%s device lost: %s; reconnecting",
                self.config.sensor_id, self.config.port, err,
            )
        finally:
            c.connected = False
            self.emitter.flush()  # readings taken before the device went are readings
            with contextlib.suppress(serial.SerialException, OSError):
                link.close()

    def _stream(self, ctx: Context, agreed: Agreed) -> bool:
        """Stream until stopped or lost; False when the device refused to stream after all."""
        try:
            Streamer(ctx, agreed).run()
        except NoStream as why:
            self.limiter.warn(
                "nostream", "sensor=%s %s; reading it with requests instead",
                self.config.sensor_id, why,
            )
            return False
        return True

    def _connect(self) -> tuple[Link, Agreed, bool] | None:
        """Open and handshake, retrying with capped backoff; None once stopped. The bool says
        whether to stream (a SettingsError when STREAM: on meets a device that cannot)."""
        cfg = self.config
        for delay in backoff(RECONNECT_INITIAL, RECONNECT_CAP):
            if self.stop.is_set():
                return None
            try:
                connected = open_device(cfg.port, cfg.baudrate, cfg.wanted, self.stop)
            except BadPort as err:  # a wrong name or option: exit 2, retrying will not fix it
                raise SettingsError(
                    f"{cfg.settings_path}: SENSORS[{cfg.sensor_id}].PORT (or --port): {err}"
                ) from err.reason
            except (serial.SerialException, OSError, NoAnswer, PortUnavailable) as err:
                self._not_connected(err)
            else:
                if connected is None:
                    return None
                link, agreed = connected
                try:
                    stream = wants_stream(cfg, agreed)
                except BaseException:
                    link.close()
                    raise
                self._on_connected(agreed, stream)
                return link, agreed, stream
            if self._wait(delay):
                return None
        return None  # backoff() without attempts never ends; this satisfies the type checker

    def _not_connected(self, err: Exception) -> None:
        """A failed connect: said in the heartbeat (why, and whether the port itself is what
        is missing: then a supervisor lets the reader retry instead of restarting it) and in
        the log, rate-limited."""
        c = self.counters
        c.waiting_for_port = isinstance(err, PortUnavailable)
        c.problem = str(err) if c.waiting_for_port else f"cannot connect: {err}"
        self.limiter.warn(
            "connect", "sensor=%s port=%s cannot connect: %s; retrying",
            self.config.sensor_id, self.config.port, err,
        )

    def _on_connected(self, agreed: Agreed, stream: bool) -> None:
        c = self.counters
        if self._connected_once:
            c.reconnects += 1
        self._connected_once = True
        c.connected = True
        c.problem, c.waiting_for_port = "", False
        c.firmware = agreed.firmware
        c.mode = "stream" if stream else "poll"
        self.limiter.log(
            logging.INFO, "connected",
            "sensor=%s port=%s connected firmware=%r mode=%s reconnects=%d",
            self.config.sensor_id, self.config.port, agreed.firmware or "(no id)", c.mode,
            c.reconnects,
        )
        if agreed.first is not None and not stream:  # a stream brings its own first reading
            raw, ts_ns = agreed.first
            self.emitter.publish(Batch.answer(raw, ts_ns, agreed.flags, agreed.convert))
        self.heartbeat.beat(force=True)

    def chores(self, now: float) -> None:
        """Heartbeat and the periodic summary; called at most once per heartbeat interval."""
        c = self.counters
        c.skipped_slots = self.schedule.skipped
        self.serve()
        self.heartbeat.beat(STATE_RUNNING if c.connected else STATE_DISCONNECTED)
        if now >= self._next_summary:
            self._next_summary = now + SUMMARY_INTERVAL
            log.info("sensor=%s seq=%d readings=%d bad_lines=%d timeouts=%d reconnects=%d "
                     "connected=%s", self.config.sensor_id, c.seq, c.readings, c.bad_lines,
                     c.timeouts, c.reconnects, c.connected)

    def _wait(self, seconds: float) -> bool:
        """Wait (reconnecting), heartbeating and answering replay requests; True as soon as
        stop is set."""
        deadline = time.monotonic() + seconds
        every = self.config.heartbeat_interval
        while not self.stop.is_set():
            now = time.monotonic()
            self.chores(now)
            left = deadline - now
            if left <= 0:
                break
            self.sleeper.sleep(min(left, every))
        return self.stop.is_set()

    def serve(self) -> None:
        """Answer queued replay requests; they never block, and a bad one is only counted."""
        self.sleeper.serve()


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
