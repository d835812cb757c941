"""Request/answer mode: one `read` per reading, up to READ_PIPELINE of them in flight.

The device answers requests in the order it got them, so with several `read`s written ahead
each answer line is the answer to the oldest request still in flight. Requests go ahead only
when they are due at once (POLLING_DELAY 0, or the schedule behind) and only to PowMon
firmware, which reads them from its receive buffer one by one (`Agreed.queues`); a sketch
without `id` (the original protocol) gets one request at a time. A reading's timestamp is
the moment its request was written. A bad answer or a timeout drains what is in flight (the
answers before the `ok` of `r` are thrown away: they take no seq) and the pipeline fills
again from the next good answer, one request at first.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING, Final

import zmq
from zmq.backend import zmq_poll

from powmon.readers.handshake import Agreed
from powmon.readers.link import BadAnswer, Link, parse_answer

if TYPE_CHECKING:
    from powmon.readers.reader import Reader

SERVE_EVERY: Final = 0.005  # how often the hot loop looks for replay requests
IDLE_STEP: Final = 0.05  # longest wait between replay checks (slow polling, reconnecting)
# Below this period the schedule waits on the stop event (microsecond timeouts); at or above it
# on the replay socket (millisecond timeouts, rounded up: a request goes out < 1 ms late).
POLL_WAIT_MIN: Final = 0.002
_POLLIN: Final = int(zmq.POLLIN)
_Poll = list[tuple[zmq.Socket[bytes], int]]


class Poller:
    """The hot loop of one connected device in request/answer mode."""

    def __init__(self, reader: Reader, link: Link, agreed: Agreed) -> None:
        self.reader = reader
        self.link = link
        self.agreed = agreed
        self.request = reader.config.wanted.read_command
        self.depth = reader.config.read_pipeline if agreed.queues else 1
        self.in_flight: deque[int] = deque()  # time_ns of each request written, oldest first
        replay = reader.replay.sock if reader.replay is not None else None
        self.replay = replay
        period = reader.schedule.period
        self.poll = [(replay, _POLLIN)] if replay is not None and period >= POLL_WAIT_MIN else None

    def run(self) -> None:
        """Poll until stopped; DeviceLost (and serial errors) propagate to the reader."""
        reader, link, in_flight = self.reader, self.link, self.in_flight
        stop, emitter, request = reader.stop, reader.emitter, self.request
        flags, convert = self.agreed.flags, self.agreed.convert
        chores_every = reader.config.heartbeat_interval
        schedule = reader.schedule
        schedule.restart(time.monotonic())
        next_chores = next_serve = 0.0
        replay = self.replay
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_chores:
                next_chores = now + chores_every
                reader.chores(now)
            if replay is not None and now >= next_serve:
                next_serve = now + SERVE_EVERY
                reader.serve()
            if not in_flight:
                if schedule.period:
                    wait = schedule.delay(now)
                    if wait > 0:
                        wait = min(wait, chores_every, IDLE_STEP)
                        next_serve = self._idle(wait, now, next_serve)
                        continue
                    schedule.advance(now)
                in_flight.append(time.time_ns())
                link.send(request)
            line = link.read_line()
            ts_ns = in_flight.popleft()
            try:
                raw = parse_answer(line)
            except BadAnswer as bad:
                reader.bad_answer(link, bad, len(in_flight))
                in_flight.clear()
                continue
            reader.answered()
            self._fill()
            emitter.emit(raw, ts_ns, flags, convert)

    def _fill(self) -> None:
        """Write the requests that are due now, up to `depth` in flight.

        Right after a good answer and before it is published, so converting, encoding and
        sending overlap the next round trips.
        """
        reader, in_flight, depth = self.reader, self.in_flight, self.depth
        schedule, link, request, stop = reader.schedule, self.link, self.request, reader.stop
        while len(in_flight) < depth:
            if schedule.period:
                now = time.monotonic()
                if schedule.delay(now) > 0:
                    return
                schedule.advance(now)
            if stop.is_set():
                return
            in_flight.append(time.time_ns())
            link.send(request)

    def _idle(self, wait: float, now: float, next_serve: float) -> float:
        """Wait for the next slot; returns when the replay socket is next due for a look.

        Waiting on the replay socket makes one wake-up both end the wait and see (and answer at
        once) a replay request, instead of a stop.wait plus a ZMQ_EVENTS check per reading.
        """
        if self.poll is None:
            self.reader.stop.wait(wait)
            return next_serve
        if zmq_poll(self.poll, math.ceil(wait * 1000)):
            self.reader.serve()
        return now + wait + SERVE_EVERY
