"""What a tap says when it hears nothing, so that an operator never stares at a silent screen.

A SUB socket connects in the background and never fails: with nothing running, or with a
broker that refuses this host's CURVE key, `powmon tap` would wait silently for ever. The tap
subscribes to the heartbeats too (shown only with --status): every PowMon process beats at
least every HEARTBEAT_INTERVAL, so a quiet spell of a few intervals means nothing is there.
The socket's monitor tells the two cases apart (no broker answering, or a broker with nobody
publishing) and reports a refused handshake at once: ZeroMQ never retries one, so the tap
stops (exit 1) with what to do instead of waiting.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Final

import zmq

from powmon.common.curvezmq import Curve
from powmon.common.errors import PowmonError
from powmon.common.transport import (
    HANDSHAKE_FAILED,
    HANDSHAKE_OK,
    HANDSHAKE_REFUSED,
    SUB_LINGER_MS,
    handshake_problem,
    monitor_event,
    secure_client,
)

MIN_QUIET_S: Final = 3.0
QUIET_BEATS: Final = 2.5  # heartbeat intervals of silence that mean nobody is publishing
_EVENTS: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: HANDSHAKE_OK,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: HANDSHAKE_REFUSED,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: HANDSHAKE_FAILED,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: HANDSHAKE_FAILED,
}
_MASK: Final = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)


class TapRefused(PowmonError):
    """Raised by a tap whose handshake with the broker was refused or failed (CURVE keys)."""


def quiet_after(heartbeat_interval: float) -> float:
    """Seconds of silence after which the tap says nothing is heard."""
    return max(MIN_QUIET_S, QUIET_BEATS * heartbeat_interval)


class Listening:
    """A tap's SUB socket on the broker's backend, with its monitor attached before it
    connects (so the first handshake's outcome is never missed), and what silence means."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        topics: Iterable[bytes],
        hwm: int,
        curve: Curve | None,
        quiet_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self._curve = curve
        self._quiet_s = quiet_s
        self._clock = clock
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        self._monitor = self.sock.get_monitor_socket(_MASK)
        # The options of common.transport.sub_socket, set here because the monitor must come first.
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, SUB_LINGER_MS)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        secure_client(self.sock, curve)
        self.sock.connect(endpoint)
        self._connected = False
        self._last = clock()
        self._said = False

    def heard(self) -> None:
        """Something came: the next silence is a new one, said again once it lasts."""
        self._last = self._clock()
        self._said = False

    def check(self) -> None:
        """Take the monitor's news and say a long silence once (on stderr); raise TapRefused
        when the broker refused this host's key or the CURVE handshake failed."""
        while self._monitor.poll(0):
            event = monitor_event(self._monitor.recv_multipart())
            if event == zmq.EVENT_DISCONNECTED:
                self._connected = False
                continue
            outcome = _EVENTS.get(event)
            if outcome == HANDSHAKE_OK:
                self._connected = True
            elif outcome is not None:
                problem = handshake_problem(outcome, self.endpoint, self._curve)
                raise TapRefused(problem or f"no handshake with {self.endpoint}")
        if not self._said and self._clock() - self._last >= self._quiet_s:
            self._said = True
            print(f"powmon tap: {self.silence()}", file=sys.stderr, flush=True)

    def silence(self) -> str:
        """What the silence means, and what to do about it."""
        quiet = f"nothing heard on {self.endpoint} for {self._quiet_s:.0f} s"
        if self._connected:
            return (f"{quiet}: the broker answers but no process publishes (is the pipeline "
                    "running? `powmon status`; start it with `powmon run`); still waiting")
        return (f"{quiet}: no broker answers there (start the pipeline with `powmon run`, or "
                "check BROKER_BACKEND); still waiting")

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)
