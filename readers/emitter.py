"""Readings onto the bus: converted, packed once, held for PUBLISH_INTERVAL, published, kept.

Both ways of reading a device end here, through one call: request/answer mode (polling.py)
hands `Emitter.publish` a batch of one reading per answer, stream mode (streaming.py) a batch
of what one wake-up brought, with the device samples lost before it. What runs per reading
does the minimum (convert, pack, hold); what runs per message (send, keep the rows in the
replay ring, bump counters) runs once per PUBLISH_INTERVAL. No log formatting unless payload
logging is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple, Protocol

import msgpack
import zmq

from powmon.common.logs import PAYLOAD_LOGGER
from powmon.common.replay import ReplayRing
from powmon.common.schema.readings import MAX_BATCH, batch_frames, pack_row
from powmon.readers.conversion import Calibration
from powmon.readers.counters import Counters

payload_log = logging.getLogger(PAYLOAD_LOGGER)
_pack: Final = pack_row
_new: Final = tuple.__new__

Converter = Callable[[float, Calibration, int], tuple[float, float, float, int]]


class Measured(Protocol):
    """One measurement as the device gave it: its ADC count and the flags it reported."""

    @property
    def raw(self) -> float: ...
    @property
    def flags(self) -> int: ...


class Answer(NamedTuple):
    """The answer to one `read`: its count, with the flags the device agreed to."""

    raw: float
    flags: int


class Batch(NamedTuple):
    """Consecutive readings of one device, timed at `stamps` (UTC ns, one per reading) and
    converted with `convert`; `dropped` device samples were lost just before the first (they
    take no seq: the message that carries the first names them). Empty with `dropped`: a loss
    no reading followed (yet)."""

    readings: Sequence[Measured]
    stamps: Sequence[int]
    convert: Converter
    dropped: int = 0

    @classmethod
    def answer(cls, raw: float, ts_ns: int, flags: int, convert: Converter) -> Batch:
        """The batch of one answer to a `read` (request/answer mode), its request's time.
        Built as plain tuples are (a NamedTuple's __new__ is Python code): one per reading."""
        return _new(cls, ((_new(Answer, (raw, flags)),), (ts_ns,), convert, 0))


class Emitter:
    """Builds, holds, publishes and remembers readings for one sensor, numbering them without
    gaps.

    Readings wait here at most `interval` (PUBLISH_INTERVAL) and go out together, as one batch
    message: the cost of the bus is per message (a send wakes ZeroMQ's I/O thread, the broker
    and every subscriber), and nobody reads a power value faster than a screen refreshes. A
    reading that arrives when the last message is at least `interval` old goes at once, so at
    rates below one reading per interval every reading is its own message, as with interval 0.
    Each reading is packed once (schema.pack_row); the message, the replay ring and replay
    answers reuse those bytes. Seq, `readings` and the ring move when a message is sent: a
    heartbeat's seq never names a reading still held here.
    """

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        sensor_id: str,
        cal: Calibration,
        counters: Counters,
        replay: int,
        interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        mark: Callable[[str, int], None] | None = None,
    ) -> None:
        self._sock = sock
        self._mark = mark  # common.publishmark: how far the session got, kill -9 or not
        self._sensor_id = sensor_id
        self._cal = cal
        self.counters = counters
        self.interval = interval
        self._clock = clock
        # The last readings' packed rows, for subscribers that missed some (common.replay);
        # appending to a bounded deque costs next to nothing and never grows.
        self.ring = ReplayRing(replay)
        self._rows: list[bytes] = []  # packed, not sent yet
        self._last_ns = 0  # ts_ns of the last row held
        self._dropped = 0  # device samples lost just before the first row held
        self._sent = -float("inf")  # monotonic time of the last message
        self._arrived = -float("inf")  # monotonic time readings last arrived
        self.messages = 0

    @property
    def deadline(self) -> float:
        """When what is held must go (monotonic); inf when nothing is held."""
        return self._sent + self.interval if self._rows else float("inf")

    @property
    def held(self) -> int:
        return len(self._rows)

    def publish(self, batch: Batch) -> None:
        """Publish a batch: converted and packed now, sent with what is held when due."""
        readings, stamps, convert, dropped = batch
        if dropped:
            self.flush()  # what is held came before the hole: its message must not name it
            self._dropped = dropped
        if not readings:
            if dropped:
                self.flush()  # a loss with no reading after it (yet): said at once
            return
        cal, rows = self._cal, self._rows
        for reading, ts_ns in zip(readings, stamps, strict=False):  # as long, by construction
            raw = reading.raw
            volts, amps, watts, flags = convert(raw, cal, reading.flags)
            rows.append(_pack((ts_ns, raw, volts, amps, watts, flags)))
        self._last_ns = stamps[-1]
        self._due()

    def _due(self) -> None:
        """Send when the interval is over, or when the next reading, expected one gap (the
        time since the last arrival) from now, would come after it: waiting for it would only
        make the held ones late (a 10 Hz sensor at PUBLISH_INTERVAL 0.1 sends every reading at
        once, whatever its jitter)."""
        now = self._clock()
        gap, self._arrived = now - self._arrived, now
        if len(self._rows) >= MAX_BATCH or now + gap >= self._sent + self.interval:
            self.flush()

    def flush_due(self, now: float) -> None:
        """Send what is held if its interval is over (the reader's loops call this at
        `deadline`)."""
        if self._rows and now >= self._sent + self.interval:
            self.flush()

    def flush(self) -> None:
        """Send what is held now, as one message (a stop, a hole, a lost device, the deadline).
        Two send() calls put the same two frames on the wire as send_multipart, cheaper (pyzmq
        builds no Frame list); PUB never blocks, at HWM it drops (and replay fills it)."""
        rows, dropped = self._rows, self._dropped
        if not rows and not dropped:
            return
        c = self.counters
        first = c.seq
        if rows and self._mark is not None:  # before the send: never behind what went out
            self._mark(c.session, first + len(rows))
        sock = self._sock
        # One message holds at most MAX_BATCH readings (a long read can bring more): slices,
        # the loss named by the first.
        for at in range(0, max(len(rows), 1), MAX_BATCH):
            part = rows[at : at + MAX_BATCH]
            topic, payload = batch_frames(self._sensor_id, c.session, first + at, part, dropped)
            sock.send(topic, zmq.SNDMORE)
            sock.send(payload)
            self.messages += 1
            if part:
                self.ring.extend(first + at, part, dropped)
            dropped = 0
        self._sent = self._clock()
        self._rows, self._dropped = [], 0
        if rows:
            c.seq = first + len(rows)
            c.readings += len(rows)
            c.last_reading_ns = self._last_ns
            if payload_log.isEnabledFor(logging.DEBUG):
                self._log_rows(first, rows)

    def _log_rows(self, first: int, rows: Sequence[bytes]) -> None:
        for i, row in enumerate(rows):
            _ts, raw, volts, amps, watts, flags = msgpack.unpackb(row)
            payload_log.debug(
                "sensor=%s session=%s seq=%d raw=%s volts=%.5f amps=%.4f watts=%.3f flags=%d",
                self._sensor_id, self.counters.session, first + i, raw, volts, amps, watts, flags,
            )
