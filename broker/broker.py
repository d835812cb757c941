"""The bus: a ZeroMQ XSUB/XPUB proxy, so every publisher and subscriber knows one address each.

Readers PUB-connect to the frontend (XSUB), the writer, the uplink and taps SUB-connect to the
backend (XPUB); subscriptions flow upstream through the proxy. The forwarding itself runs in
libzmq's C proxy (zmq.proxy_steerable) on a thread of its own, since a Python loop would cap
the bus far below what the sockets can carry; the main thread only watches for the stop signal
and publishes the broker's heartbeat. At the high-water mark XPUB drops for the slow subscriber
only (never blocks the others); readers' replay buffers and the writer's gap accounting make
such a drop visible and repairable.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass

import zmq

from powmon.common.errors import InUseError, PowmonError
from powmon.common.schema import STATE_STOPPED
from powmon.common.settings import Settings
from powmon.common.transport import Heartbeat, pub_socket

log = logging.getLogger(__name__)

_CONTROL = "inproc://powmon-broker-control"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    frontend: str
    backend: str
    hwm: int
    heartbeat_interval: float

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerConfig:
        return cls(
            settings.broker_frontend,
            settings.broker_backend,
            settings.hwm,
            settings.heartbeat_interval,
        )


def _proxy(ctx: zmq.Context[zmq.Socket[bytes]], config: BrokerConfig, ready: threading.Event,
           failed: list[tuple[str, zmq.ZMQError]]) -> None:
    frontend = ctx.socket(zmq.XSUB)
    backend = ctx.socket(zmq.XPUB)
    control = ctx.socket(zmq.PAIR)
    try:
        for sock in (frontend, backend, control):
            sock.setsockopt(zmq.LINGER, 0)
        frontend.setsockopt(zmq.RCVHWM, config.hwm)
        backend.setsockopt(zmq.SNDHWM, config.hwm)
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
    ready = threading.Event()
    failed: list[tuple[str, zmq.ZMQError]] = []
    thread = threading.Thread(
        target=_proxy, args=(ctx, config, ready, failed), name="proxy", daemon=True
    )
    thread.start()
    ready.wait()
    if failed:
        ctx.term()
        endpoint, err = failed[0]
        if err.errno == errno.EADDRINUSE:
            raise InUseError(
                f"bus endpoint {endpoint} is already in use (by another broker or program)"
            ) from err
        raise PowmonError(f"broker cannot bind {endpoint}: {err}") from err
    log.info("broker up frontend=%s backend=%s hwm=%d", config.frontend, config.backend,
             config.hwm)
    status = pub_socket(ctx, config.frontend, config.hwm)
    status.setsockopt(zmq.LINGER, 0)
    beat = Heartbeat(status, "broker", "broker", config.heartbeat_interval, dict)
    control = ctx.socket(zmq.PAIR)
    control.setsockopt(zmq.LINGER, 0)
    control.connect(_CONTROL)
    try:
        while not stop.wait(min(0.2, config.heartbeat_interval)):
            beat.beat()
    finally:
        beat.beat(STATE_STOPPED, force=True)
        control.send(b"TERMINATE")
        thread.join(timeout=5)
        control.close()
        status.close()
        ctx.term()
        log.info("broker stopped")
