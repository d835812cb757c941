"""How a reader sleeps: on its replay socket and its stop request, until its next deadline.

A wake-up costs more than the work it wakes for (benchmarks/README.md), so a reader sleeps
in one poll(2) on the replay socket's descriptor and the stop request's (common.runtime.Stop)
until the next slot, heartbeat or publish deadline it computed: a replay request is answered
at once, a stop ends the sleep at once, and a reader at rest makes no wake-up it did not plan.
With a plain Event (tests) there is no stop descriptor, and it sleeps in slices of IDLE_STEP
so that a stop is still seen; without select.poll (Windows) it waits in zmq_poll.
"""

from __future__ import annotations

import math
import select
import threading
from typing import Final

import zmq
from zmq.backend import zmq_poll

from powmon.common.replay import ReplayServer
from powmon.common.runtime import wake_fd

IDLE_STEP: Final = 0.05  # longest sleep when a stop cannot wake it (a plain Event)
# Shorter sleeps wait on the stop event (microsecond timeouts: a 1 kHz grid); poll(2) takes
# milliseconds, rounded up.
POLL_WAIT_MIN: Final = 0.002
_POLLIN: Final = int(zmq.POLLIN)


class Sleeper:
    """One reader's sleep; `serve` answers the replay requests that woke it."""

    def __init__(self, replay: ReplayServer | None, stop: threading.Event) -> None:
        self._replay = replay
        self._stop = stop
        self._stop_fd = wake_fd(stop)
        self._poll: select.poll | None = None
        # The replay socket's descriptor: ZeroMQ's edge-triggered signal (see serve()).
        self.replay_fd = int(replay.sock.getsockopt(zmq.FD)) if replay is not None else None
        self._zmq: list[tuple[zmq.Socket[bytes] | int, int]] = (
            [(replay.sock, _POLLIN)] if replay is not None else [])
        if not hasattr(select, "poll") and self._stop_fd is not None:
            self._zmq.append((self._stop_fd, _POLLIN))  # Windows: a stop ends the zmq_poll too
        if hasattr(select, "poll"):
            self._poll = select.poll()
            if self.replay_fd is not None:
                self._poll.register(self.replay_fd, select.POLLIN)
            if self._stop_fd is not None:
                self._poll.register(self._stop_fd, select.POLLIN)

    def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until a stop; answer replay requests that come meanwhile."""
        if self._stop.is_set():
            return
        if 0 < seconds < POLL_WAIT_MIN:
            self._stop.wait(seconds)
            return
        if self._stop_fd is None:
            seconds = min(seconds, IDLE_STEP)
        ms = max(1, math.ceil(seconds * 1000)) if seconds > 0 else 0
        if self._poll is not None:
            if self._stop_fd is None and self._replay is None:
                self._stop.wait(seconds)
                return
            for fd, _ in self._poll.poll(ms):
                if fd != self._stop_fd:
                    self.serve()
            return
        if self._zmq:
            if zmq_poll(self._zmq, ms):
                self.serve()
        else:
            self._stop.wait(seconds)

    def serve(self) -> None:
        """Answer queued replay requests; they never block, and a bad one is only counted."""
        if self._replay is not None:
            self._replay.serve_pending()
