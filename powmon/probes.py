"""Probes for `powmon check-config`: who is on the bus, is an endpoint free, does a port answer.

Each probe is short and leaves nothing behind: a SUB socket that listens for heartbeats for
about two heartbeat intervals, a bind that is undone at once (or, for a broker on another
host, a connection and its CURVE handshake), a port opened, asked and closed.
A port whose reader is heard on the bus is not opened at all: opening an Arduino's port
resets the board, under the reader's feet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import serial
import zmq

from powmon.common.curvezmq import Curve
from powmon.common.errors import SchemaError
from powmon.common.schema.envelope import STATUS_PREFIX
from powmon.common.schema.status import Status, decode_status
from powmon.common.settings import Settings
from powmon.common.transport import (
    handshake_outcome,
    handshake_problem,
    secure_client,
    sub_socket,
)
from powmon.readers.handshake import NoAnswer, open_device
from powmon.readers.link import BadAnswer, BadPort, PortUnavailable, parse_answer
from powmon.readers.reader import ReaderConfig

PORT_SYNC_S: Final = 3.0  # enough for an Arduino's bootloader after the reset an open causes
LISTEN_MIN_S: Final = 1.0
REACH_S: Final = 3.0  # a broker on another host: how long to wait for the handshake


@dataclass(frozen=True, slots=True)
class Heard:
    """Processes heard on the bus: (process, id) -> their last state."""

    states: dict[tuple[str, str], str] = field(default_factory=dict)

    def names(self) -> str:
        return ", ".join(p if p == i else f"{p} {i}" for p, i in sorted(self.states))


def listen(settings: Settings) -> Heard:
    """Heartbeats on the backend for ~2.5 heartbeat intervals (at least LISTEN_MIN_S)."""
    heard = Heard()
    for status in heartbeats(settings, max(LISTEN_MIN_S, 2.5 * settings.heartbeat_interval)):
        heard.states[(status.process, status.ident)] = status.state
    return heard


def heartbeats(
    settings: Settings, seconds: float, clock: Callable[[], float] = time.monotonic,
    done: Callable[[], bool] = lambda: False,
) -> Iterator[Status]:
    """The heartbeats heard on the backend for `seconds`, or until `done()`; junk on the bus
    is skipped (it says nothing about this pipeline)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = sub_socket(
        ctx, settings.broker_backend, [STATUS_PREFIX], settings.hwm, curve=settings.curve
    )
    deadline = clock() + seconds
    try:
        while (now := clock()) < deadline and not done():
            if not sock.poll(int((deadline - now) * 1000) + 1):
                continue
            try:
                status = decode_status(sock.recv_multipart())
            except SchemaError:
                continue
            yield status
    finally:
        sock.close(linger=0)
        ctx.term()


def endpoint_state(endpoint: str) -> str:
    """'free', 'in use', or why it cannot be used at all."""
    scheme, _, where = endpoint.partition("://")
    if scheme == "inproc":
        return "unusable: inproc endpoints work only inside one process"
    if scheme == "ipc":
        return _ipc_state(where)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as err:
        return "in use" if err.errno == errno.EADDRINUSE else f"unusable: {err}"
    finally:
        sock.close(linger=0)
        ctx.term()
    return "free"


def reach(endpoint: str, kind: int, curve: Curve | None) -> tuple[bool, str]:
    """Connect to a broker on another host as its clients do (a PUB to the frontend, a SUB to
    the backend, with this host's CURVE keys): (ok, how the handshake went)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(kind)
    try:
        secure_client(sock, curve)
        sock.connect(endpoint)
        outcome = handshake_outcome(sock, threading.Event(), REACH_S)
    finally:
        sock.close(linger=0)
        ctx.term()
    problem = handshake_problem(outcome, endpoint, curve)
    if problem is not None:
        return False, problem
    return True, "reached; CURVE handshake succeeded" if curve else "reached"


def _ipc_state(path: str) -> str:
    """An ipc path is in use when something accepts a connection on it (binding it would
    silently take it over: ZeroMQ unlinks the old socket file)."""
    if not hasattr(socket, "AF_UNIX"):
        return "unusable: ipc endpoints need Unix domain sockets"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return "free"
        except OSError as err:
            return f"unusable: {err}"
    return "in use"


def port_answer(settings: Settings, sensor_id: str, stop: threading.Event) -> tuple[bool, str]:
    """Open the sensor's port, handshake as the reader does, read once: (ok, what happened)."""
    config = ReaderConfig.from_settings(settings, sensor_id)
    wanted = dataclasses.replace(config.wanted, sync_seconds=PORT_SYNC_S)
    link = None
    try:
        connected = open_device(config.port, config.baudrate, wanted, stop)
        if connected is None:
            return False, "stopped"
        link, agreed = connected
        raw = parse_answer(link.ask(wanted.read_command))
    except (PortUnavailable, BadPort) as err:
        return False, f"cannot open: {err.reason}"
    except NoAnswer:
        return False, f"opened, but no valid answer to {wanted.read_command!r} in {PORT_SYNC_S:g}s"
    except BadAnswer as bad:
        return False, f"opened, but a bad answer to a read ({bad})"
    except (serial.SerialException, OSError) as err:
        return False, f"opened, then failed: {err}"
    finally:
        if link is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                link.close()
    firmware = f"firmware {agreed.firmware!r}" if agreed.firmware else "no firmware id"
    return True, f"opened and answered (read -> {raw}; {firmware})"
