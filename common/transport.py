"""ZeroMQ socket helpers: every socket PowMon makes gets its high-water marks and linger here.

pyzmq's default high-water mark of 1,000 messages silently dropped 29-46% of a fast publisher's
readings on a 2-core machine, so every socket sets SNDHWM/RCVHWM from settings (HWM). Linger is
bounded so that a process exiting cleanly gets its queued readings out, but can never hang on a
broker that went away.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import zmq
from zmq.utils.monitor import recv_monitor_message

from powmon.common import lifeline
from powmon.common.schema import (
    STATE_RUNNING,
    ReaderEnd,
    ReaderProgress,
    Status,
    encode_status,
)

PUB_LINGER_MS: Final = 2000
SUB_LINGER_MS: Final = 0
SUBSCRIPTION_GRACE: Final = 0.05


def pub_socket(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, hwm: int) -> zmq.Socket[bytes]:
    """A PUB connected to the broker's frontend (publishers never bind)."""
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, PUB_LINGER_MS)
    sock.connect(endpoint)
    return sock


def sub_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    topics: Iterable[bytes],
    hwm: int,
) -> zmq.Socket[bytes]:
    """A SUB connected to the broker's backend, subscribed to the given topic prefixes."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, SUB_LINGER_MS)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
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
                self._lifeline.report(r.readings, r.session, r.seq)


def wait_for_broker(sock: zmq.Socket[bytes], stop: threading.Event, timeout: float) -> bool:
    """Wait (bounded) until a PUB socket has a live connection to the broker.

    A PUB drops what it sends before the broker's subscriptions reach it, and a reader's first
    readings (seq 0, 1, ...) would be lost to every subscriber on each start. Readers start
    far less often than they publish, so a short wait here is cheap. A broker that is down
    only delays the start by `timeout`; readings then flow (and are dropped) as PUB does.
    """
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if monitor.poll(int(min(left, 0.1) * 1000) + 1):
                event = recv_monitor_message(monitor)
                if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    # The broker sends its subscriptions right after the handshake; PUB takes
                    # them in at its next send. One short grace covers that loopback hop.
                    stop.wait(SUBSCRIPTION_GRACE)
                    return True
        return False
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


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
