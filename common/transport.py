"""ZeroMQ socket helpers: every socket PowMon makes gets its high-water marks and linger here.

pyzmq's default high-water mark of 1,000 messages silently dropped 29-46% of a fast publisher's
readings on a 2-core machine, so every socket sets SNDHWM/RCVHWM from settings (HWM). Linger is
bounded so that a process exiting cleanly gets its queued readings out, but can never hang on a
broker that went away.

Every socket that connects to PowMon (the bus, a reader's replay socket) gets its CURVE keys in
one place, `secure_client`, from the one `Curve` value of the settings (common.curve): None
on a single host, where the bus stays on loopback in the clear.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import zmq

from powmon.common import lifeline
from powmon.common.curvezmq import Curve
from powmon.common.errors import PowmonError
from powmon.common.schema.status import (
    STATE_RUNNING,
    ReaderEnd,
    ReaderProgress,
    Status,
    encode_status,
)

PUB_LINGER_MS: Final = 2000
SUB_LINGER_MS: Final = 0
SUBSCRIPTION_GRACE: Final = 0.05


S = TypeVar("S", bound="zmq.Socket[Any]")

# What a connecting socket's monitor says about its first handshake with the server.
HANDSHAKE_OK: Final = "ok"
HANDSHAKE_REFUSED: Final = "refused"  # the server's ZAP handler said no: an unknown key
HANDSHAKE_FAILED: Final = "failed"  # no CURVE where the server wants it, a wrong server key
_HANDSHAKE_EVENTS: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: HANDSHAKE_OK,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: HANDSHAKE_REFUSED,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: HANDSHAKE_FAILED,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: HANDSHAKE_FAILED,
}
_HANDSHAKE_MASK: Final = functools.reduce(operator.or_, _HANDSHAKE_EVENTS)


def secure_client(sock: zmq.Socket[Any], curve: Curve | None, server: bytes = b"") -> None:
    """The CURVE keys of a socket that connects to PowMon, before it connects: this host's
    pair, and the server's public key (the broker's unless `server` names another, as a
    reader's replay socket announces its own). Nothing at all when `curve` is None."""
    if curve is None:
        return
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.pair.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.pair.secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server or curve.server)


def pub_socket(ctx: zmq.Context[S], endpoint: str, hwm: int, *, curve: Curve | None) -> S:
    """A PUB connected to the broker's frontend (publishers never bind)."""
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, PUB_LINGER_MS)
    secure_client(sock, curve)
    sock.connect(endpoint)
    return sock


def sub_socket(
    ctx: zmq.Context[S],
    endpoint: str,
    topics: Iterable[bytes],
    hwm: int,
    *,
    curve: Curve | None,
) -> S:
    """A SUB connected to the broker's backend, subscribed to the given topic prefixes."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, SUB_LINGER_MS)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    secure_client(sock, curve)
    sock.connect(endpoint)
    return sock


class Heartbeat:
    """Publishes a process's Status on the status topic every `interval` seconds.

    Called from the process's own loop (`beat()` is cheap when it is not yet due), so that a
    heartbeat proves the loop itself is alive, not just some side thread. A reader passes
    `progress`, the typed part of its heartbeat that sinks and supervisors rely on. Under
    `powmon run` each beat also goes down the lifeline (common.lifeline), off the bus: the
    reader's readings count, or for any other process the number of beats.
    """

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        process: str,
        ident: str,
        interval: float,
        counters: Callable[[], Mapping[str, Any]],
        clock: Callable[[], float] = time.monotonic,
        progress: Callable[[], ReaderProgress] | None = None,
        gone: Callable[[], tuple[ReaderEnd, ...]] | None = None,
    ) -> None:
        self._sock = sock
        self._process = process
        self._ident = ident
        self._interval = interval
        self._counters = counters
        self._progress = progress
        self._gone = gone
        self._clock = clock
        self._next = 0.0
        self._started_ns = time.time_ns()
        self._lifeline = lifeline.current()
        self._beats = 0

    def due_in(self, now: float) -> float:
        """Seconds until the next beat is due (a loop sleeps no longer than this)."""
        return max(0.0, self._next - now)

    def beat(self, state: str = STATE_RUNNING, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now < self._next:
            return
        self._next = now + self._interval
        status = Status(
            process=self._process,
            ident=self._ident,
            pid=os.getpid(),
            ts_ns=time.time_ns(),
            state=state,
            counters=dict(self._counters()),
            started_ns=self._started_ns,
            reader=self._progress() if self._progress is not None else None,
            gone=self._gone() if self._gone is not None else (),
        )
        # A full pipe means nobody reads status right now; the next beat will do.
        with contextlib.suppress(zmq.Again):
            self._sock.send_multipart(encode_status(status), flags=zmq.NOBLOCK)
        self._beats += 1
        if self._lifeline is not None:
            r = status.reader
            if r is None:
                self._lifeline.report(self._beats)
            else:
                self._lifeline.report(r.readings, r.session, r.seq, waiting=r.waiting_for_port)


def monitor_event(frames: list[bytes]) -> int:
    """The event number of a ZeroMQ monitor message (16-bit event, 32-bit value, then the
    endpoint). Parsed here rather than by zmq.utils.monitor, which pulls in asyncio and ssl
    (~7 MiB in every reader, 256 readers on one host) to do the same."""
    if len(frames) != 2 or len(frames[0]) != 6:
        return 0
    event: int = struct.unpack("=hi", frames[0])[0]
    return event


def handshake_outcome(sock: zmq.Socket[bytes], stop: threading.Event, timeout: float) -> str | None:
    """How a connecting socket's first handshake ended (HANDSHAKE_OK, _REFUSED, _FAILED), or
    None when nothing answered within `timeout` (or `stop` was set)."""
    monitor = sock.get_monitor_socket(_HANDSHAKE_MASK)
    try:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if monitor.poll(int(min(left, 0.1) * 1000) + 1):
                event = monitor_event(monitor.recv_multipart())
                outcome = _HANDSHAKE_EVENTS.get(event)
                if outcome is not None:
                    return outcome
        return None
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def handshake_problem(outcome: str | None, endpoint: str, curve: Curve | None) -> str | None:
    """What an operator should do about a handshake outcome; None when it went well."""
    if outcome == HANDSHAKE_OK:
        return None
    if outcome == HANDSHAKE_REFUSED:
        key = curve.public_text if curve is not None else "(none)"
        return (f"{endpoint} refused this host's CURVE key {key}: copy this host's .key file "
                "into CURVE_AUTHORIZED on the broker's host")
    if outcome == HANDSHAKE_FAILED:
        if curve is None:
            return f"{endpoint} wants CURVE keys: set CURVE_CLIENT_KEY and CURVE_SERVER_PUBLIC"
        return (f"no CURVE handshake with {endpoint}: is CURVE_SERVER_PUBLIC the broker's "
                "public key, and does that broker use CURVE?")
    return f"no answer from {endpoint}"


def wait_for_broker(sock: zmq.Socket[bytes], stop: threading.Event, timeout: float,
                    endpoint: str = "", curve: Curve | None = None) -> bool:
    """Wait (bounded) until a PUB socket has a live connection to the broker.

    A PUB drops what it sends before the broker's subscriptions reach it, and a reader's first
    readings (seq 0, 1, ...) would be lost to every subscriber on each start. Readers start
    far less often than they publish, so a short wait here is cheap. A broker that is down
    only delays the start by `timeout`; readings then flow (and are dropped) as PUB does.

    A broker that refuses this host's CURVE key (or whose handshake fails: no CURVE, a wrong
    server key) raises PowmonError saying what to do: ZeroMQ does not try a refused
    connection again, so publishing on would only drop readings. Under `powmon run` the
    process is restarted with backoff, and gets in once its key is authorised.
    """
    outcome = handshake_outcome(sock, stop, timeout)
    if outcome == HANDSHAKE_OK:
        # The broker sends its subscriptions right after the handshake; PUB takes them in at
        # its next send. One short grace covers that loopback hop.
        stop.wait(SUBSCRIPTION_GRACE)
        return True
    problem = handshake_problem(outcome, endpoint or "the broker", curve)
    if outcome is not None and problem is not None:
        raise PowmonError(problem)
    return False


def recv_rest(sock: zmq.Socket[bytes], frames: list[bytes]) -> list[bytes]:
    """Append the remaining frames of the message being received, and return them.

    Receivers take frames with recv() and RCVMORE (cheaper than recv_multipart, see
    benchmarks/README.md); this takes whatever a message has beyond what they expected, so a
    message with the wrong number of frames is still taken whole and refused as one.
    """
    while sock.getsockopt(zmq.RCVMORE):
        frames.append(sock.recv())  # the frames of a message arrive together
    return frames


def close_all(*socks: zmq.Socket[bytes] | None) -> None:
    for sock in socks:
        if sock is not None and not sock.closed:
            sock.close()
