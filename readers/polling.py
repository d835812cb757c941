"""Request/answer mode: one `read` per reading, up to READ_PIPELINE of them in flight.

The device answers requests in the order it got them, so with several `read`s written ahead
each answer line is the answer to the oldest request still in flight. Requests go ahead only
when they are due at once (POLLING_DELAY 0, or the schedule behind) and only to PowMon
firmware, which reads them from its receive buffer one by one (`Agreed.queues`); a sketch
without `id` (the original protocol) gets one request at a time. A reading's timestamp is
the moment its request was written. A bad answer or a timeout drains what is in flight (the
answers before the `ok` of `r` are thrown away: they take no seq) and the pipeline fills
again from the next good answer, one request at first.

A wake-up is the cost, not the work (benchmarks/README.md): when the period is shorter than
PUBLISH_INTERVAL (the answer may wait that long anyway), the answer to a request is read at
the next slot, just before the next request goes out, so a reader wakes once per reading
instead of twice (at the slot, and when the answer came). Between slots it sleeps on the
replay socket and the stop request alone (readers.sleeper), until the next slot, heartbeat or
publish deadline.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

import serial

from powmon.common.errors import DeviceError
from powmon.readers.context import Context
from powmon.readers.emitter import Batch
from powmon.readers.handshake import Agreed
from powmon.readers.link import BadAnswer, parse_answer

SERVE_EVERY: Final = 0.005  # replay requests, at least this often when the loop never sleeps
MAX_SILENT: Final = 10  # consecutive unanswered requests before the device counts as gone


GONE: Final = (serial.SerialException, OSError)  # the port or its device went away
FRAMING_LOST: Final = frozenset({"timeout", "partial"})  # BadAnswer kinds that need a drain


class DeviceLost(DeviceError):
    """The device stopped answering at all; reopening the port usually resets it."""


class Poller:
    """The hot loop of one connected device in request/answer mode."""

    def __init__(self, ctx: Context, agreed: Agreed) -> None:
        self.ctx = ctx
        self.link = ctx.link
        self.agreed = agreed
        wanted = ctx.settings.wanted
        self.request = wanted.read_command
        self.depth = ctx.settings.read_pipeline if agreed.queues else 1
        self.in_flight: deque[int] = deque()  # time_ns of each request written, oldest first
        period = ctx.schedule.period
        self.defer = 0 < period < ctx.emitter.interval and period < wanted.timeout
        self._silent = 0  # requests in a row without an answer

    def run(self) -> None:
        """Poll until stopped; DeviceLost (and serial errors) propagate to the reader."""
        ctx, link, in_flight = self.ctx, self.link, self.in_flight
        stop, emitter, request = ctx.stop, ctx.emitter, self.request
        chores, chores_every = ctx.chores, ctx.settings.heartbeat_interval
        schedule, defer = ctx.schedule, self.defer
        schedule.restart(time.monotonic())
        next_chores = next_serve = 0.0
        sleep, serve = ctx.sleeper.sleep, ctx.sleeper.serve
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_chores:
                next_chores = now + chores_every
                chores(now)
            emitter.flush_due(now)
            # Sleep until the next slot: with nothing in flight, or with an answer to be read
            # then (defer); an answer wanted now is waited for in read_line.
            wait = schedule.delay(now) if defer or not in_flight else 0.0
            if wait > 0:
                sleep(min(wait, next_chores - now, emitter.deadline - now))  # serves replay
                next_serve = now + wait + SERVE_EVERY
                continue
            if now >= next_serve:  # a loop that never sleeps (POLLING_DELAY 0, a slow device)
                next_serve = now + SERVE_EVERY  # still answers replay requests promptly
                serve()
            if not in_flight:
                schedule.advance(now)
                in_flight.append(time.time_ns())
                link.send(request)
                if defer:
                    continue
            line = link.read_line()
            if not line and stop.is_set():
                break  # cut short by the stop: the answers in flight are read in _finish
            ts_ns = in_flight.popleft()
            try:
                raw = parse_answer(line)
            except BadAnswer as bad:
                if self._bad_answer(bad, len(in_flight)):
                    in_flight.clear()
                continue
            self._silent = 0
            self._answered(raw, ts_ns)
        self._finish()

    def _answered(self, raw: float, ts_ns: int) -> None:
        """A good answer: the requests now due go out first (so converting, encoding and
        sending overlap their round trips), then it is published. A device found gone by
        those writes takes none of it along: the answer in hand is still a reading, and so
        are those it sent before it went."""
        agreed, publish = self.agreed, self.ctx.emitter.publish
        try:
            self._fill()
        except GONE:
            publish(Batch.answer(raw, ts_ns, agreed.flags, agreed.convert))
            self._finish(gone=True)
            raise
        publish(Batch.answer(raw, ts_ns, agreed.flags, agreed.convert))

    def _finish(self, *, gone: bool = False) -> None:
        """Requests written and the loop left: their answers are readings (and the device
        counts them as sent), so they are read, as far as they come within TIMEOUT.

        On the way out after a stop; and when the device went away (`gone`: a write failed)
        with answers on their way, as far as the port still gives them (the bytes a driver
        already holds), instead of losing them with the port."""
        emitter, flags, convert = self.ctx.emitter, self.agreed.flags, self.agreed.convert
        while self.in_flight:
            try:
                line = self.link.read_line(patient=True)
            except GONE:
                if not gone:
                    raise
                return  # nothing more to read: the rest never came
            ts_ns = self.in_flight.popleft()
            try:
                raw = parse_answer(line)
            except BadAnswer:
                self.in_flight.clear()
                return
            emitter.publish(Batch.answer(raw, ts_ns, flags, convert))

    def _fill(self) -> None:
        """Write the requests that are due now, up to `depth` in flight.

        Right after a good answer and before it is published, so converting, encoding and
        sending overlap the next round trips.
        """
        ctx, in_flight, depth = self.ctx, self.in_flight, self.depth
        schedule, link, request, stop = ctx.schedule, self.link, self.request, ctx.stop
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

    def _bad_answer(self, bad: BadAnswer, in_flight: int) -> bool:
        """Count a bad answer (or silence); DeviceLost after MAX_SILENT silences. True when
        the answers still in flight are gone (drained, or the stop came).

        Only silence and a line cut short lose the line framing, and so are drained (`r` and
        its `ok` realign requests and answers). A whole line that is not a reading (noise
        ending in a line end, a non-number) leaves the framing intact: the answers in flight
        behind it are still readings, and are read as such, not thrown away uncounted.
        """
        ctx = self.ctx
        if ctx.stop.is_set():
            return True  # the read was cut short by the stop request, not by the device
        c = ctx.counters
        if bad.kind == "timeout":
            c.timeouts += 1
            self._silent += 1
            if self._silent >= MAX_SILENT:
                raise DeviceLost(f"no answer to {MAX_SILENT} requests in a row")
        else:
            c.bad_lines += 1
        ctx.limiter.warn(
            bad.kind, "sensor=%s bad answer %s (bad_lines=%d timeouts=%d)",
            ctx.settings.wanted.sensor_id, bad, c.bad_lines, c.timeouts,
        )
        if bad.kind not in FRAMING_LOST:
            return False
        self.link.drain(in_flight)
        return True
