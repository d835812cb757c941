"""The bus: a ZeroMQ XSUB/XPUB proxy, so every publisher and subscriber knows one address each.

Readers PUB-connect to the frontend (XSUB), the writer, the uplink and taps SUB-connect to the
backend (XPUB); subscriptions flow upstream through the proxy. The forwarding itself runs in
libzmq's C proxy (zmq.proxy_steerable) on a thread of its own, since a Python loop would cap
the bus far below what the sockets can carry; the main thread only watches for the stop signal
and publishes the broker's heartbeat. At the high-water mark XPUB drops for the slow subscriber
only (never blocks the others); readers' replay buffers and the writer's gap accounting make
such a drop visible and repairable.

When the bus is reachable from other hosts both sockets are CURVE servers (common.curve): a
Gate (common.zap) admits only authorised keys, and logs and counts each refusal
(`curve_refused`); clients that fail the handshake before they get that far (no CURVE, the
wrong server key) are seen by the sockets' monitors, logged and counted too (`curve_failed`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from dataclasses import dataclass

import zmq

from powmon.common.curvezmq import Curve
from powmon.common.errors import InUseError, PowmonError, SettingsError
from powmon.common.logs import RateLimiter
from powmon.common.schema.status import STATE_STOPPED
from powmon.common.settings import Settings
from powmon.common.transport import Heartbeat, close_all, pub_socket
from powmon.common.zap import Gate

log = logging.getLogger(__name__)

_CONTROL = "inproc://powmon-broker-control"
_MONITOR = "inproc://powmon-broker-monitor-"
_MONITORED = ("frontend", "backend")
_FAILED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    frontend: str
    backend: str
    hwm: int
    heartbeat_interval: float
    curve: Curve | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerConfig:
        """Raises SettingsError on a host whose settings say the broker runs elsewhere."""
        curve = settings.curve
        if curve is not None and not curve.broker_here:
            raise SettingsError(
                f"{settings.path}: CURVE_SERVER_KEY: required to run the broker here; these "
                "settings are for a host whose broker runs elsewhere (CURVE_SERVER_PUBLIC)"
            )
        return cls(
            settings.broker_frontend,
            settings.broker_backend,
            settings.hwm,
            settings.heartbeat_interval,
            curve,
        )


class Handshakes:
    """Failed handshakes on the broker's CURVE sockets, from their monitors: a client without
    CURVE, or with the wrong CURVE_SERVER_PUBLIC, never reaches the Gate."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.failed = 0
        self._limiter = RateLimiter()
        self.socks: list[zmq.Socket[bytes]] = []
        for name in _MONITORED:
            sock = ctx.socket(zmq.PAIR)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(_MONITOR + name)
            self.socks.append(sock)

    def take(self) -> None:
        # Only with CURVE: zmq.utils.monitor pulls in asyncio and ssl (~7 MiB).
        from zmq.utils.monitor import recv_monitor_message  # noqa: PLC0415

        for sock in self.socks:
            while sock.poll(0):
                event = recv_monitor_message(sock)
                self.failed += 1
                where = event["endpoint"].decode(errors="replace")
                why = _why(event["event"], event["value"])
                self._limiter.log(
                    log, logging.WARNING, f"curve-failed/{why}",
                    "the bus: a client failed the CURVE handshake on %s (%s); failed so far: %d",
                    where, why, self.failed,
                )

    def close(self) -> None:
        close_all(*self.socks)


def _why(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        # `value` is an errno: the client went away mid-handshake. A client without CURVE
        # often does, when it sees the mismatch first (which side does is libzmq's race).
        return (f"it hung up during the handshake ({os.strerror(value)}): "
                "no CURVE keys, or another broker's public key?")
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "it has no CURVE keys"
    if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "its CURVE_SERVER_PUBLIC is not this broker's public key"
    return f"ZeroMQ error {value:#x}"


def _proxy(ctx: zmq.Context[zmq.Socket[bytes]], config: BrokerConfig, gate: Gate | None,
           ready: threading.Event, failed: list[tuple[str, zmq.ZMQError]]) -> None:
    frontend = ctx.socket(zmq.XSUB)
    backend = ctx.socket(zmq.XPUB)
    control = ctx.socket(zmq.PAIR)
    try:
        for sock in (frontend, backend, control):
            sock.setsockopt(zmq.LINGER, 0)
        frontend.setsockopt(zmq.RCVHWM, config.hwm)
        backend.setsockopt(zmq.SNDHWM, config.hwm)
        if gate is not None:
            for name, sock in zip(_MONITORED, (frontend, backend), strict=True):
                gate.secure(sock)
                sock.monitor(_MONITOR + name, _FAILED_EVENTS)
        for sock, endpoint in ((frontend, config.frontend), (backend, config.backend),
                               (control, _CONTROL)):
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as err:
                failed.append((endpoint, err))
                return
        ready.set()
        zmq.proxy_steerable(frontend, backend, None, control)
    except zmq.ZMQError as err:
        failed.append(("proxy", err))
    finally:
        ready.set()
        for sock in (frontend, backend, control):
            sock.close()


def run(config: BrokerConfig, stop: threading.Event) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gate = Gate(ctx, config.curve, "the bus") if config.curve is not None else None
    ready = threading.Event()
    failed: list[tuple[str, zmq.ZMQError]] = []
    thread = threading.Thread(
        target=_proxy, args=(ctx, config, gate, ready, failed), name="proxy", daemon=True
    )
    thread.start()
    ready.wait()
    if failed:
        if gate is not None:
            gate.close()
        ctx.term()
        endpoint, err = failed[0]
        if err.errno == errno.EADDRINUSE:
            raise InUseError(
                f"bus endpoint {endpoint} is already in use (by another broker or program)"
            ) from err
        raise PowmonError(f"broker cannot bind {endpoint}: {err}") from err
    log.info("broker up frontend=%s backend=%s hwm=%d curve=%s", config.frontend,
             config.backend, config.hwm, "on" if gate is not None else "off")
    handshakes = Handshakes(ctx) if gate is not None else None

    def counters() -> dict[str, int]:
        if gate is None or handshakes is None:
            return {}
        return {"curve_refused": gate.refused, "curve_failed": handshakes.failed}

    status = pub_socket(ctx, config.frontend, config.hwm, curve=config.curve)
    status.setsockopt(zmq.LINGER, 0)
    beat = Heartbeat(status, "broker", "broker", config.heartbeat_interval, counters)
    control = ctx.socket(zmq.PAIR)
    control.setsockopt(zmq.LINGER, 0)
    control.connect(_CONTROL)
    try:
        # At rest it wakes once per heartbeat (a dead proxy thread is seen then); with CURVE,
        # refused handshakes are logged within 0.2 s.
        every = config.heartbeat_interval
        step = every if handshakes is None else min(0.2, every)
        _watch(thread, failed, handshakes, beat, stop, step)
    finally:
        beat.beat(STATE_STOPPED, force=True)
        if thread.is_alive():  # PAIR blocks without its peer: never wait on a dead one
            with contextlib.suppress(zmq.Again):
                control.send(b"TERMINATE", zmq.NOBLOCK)
        thread.join(timeout=5)
        close_all(control, status)
        if handshakes is not None:
            handshakes.close()
        if gate is not None:
            gate.close()
        ctx.term()
        log.info("broker stopped")


def _watch(thread: threading.Thread, failed: list[tuple[str, zmq.ZMQError]],
           handshakes: Handshakes | None, beat: Heartbeat, stop: threading.Event,
           step: float) -> None:
    """Beat until stopped; a proxy thread that died is an error (exit 1, restarted by the
    supervisor): a dead bus must not keep looking healthy."""
    while not stop.wait(step):
        if not thread.is_alive():
            where, err = failed[0] if failed else ("proxy", None)
            raise PowmonError(f"the proxy thread stopped ({where}: {err})")
        if handshakes is not None:
            handshakes.take()
        beat.beat()
