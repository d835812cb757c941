"""One reader session: its identity, its counters, and turning answers into published readings.

A session starts with the process; `(sensor_id, session, seq)` names each reading everywhere
downstream, so seq only moves when a reading is actually published: a skipped bad line leaves
no gap. What runs per reading does the minimum (convert, pack, hold); what runs per message
(send, keep the rows in the replay ring, bump counters) runs once per PUBLISH_INTERVAL. No log
formatting unless payload logging is on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import zmq

from powmon.common.conversion import Calibration
from powmon.common.logs import PAYLOAD_LOGGER
from powmon.common.replay import ReplayRing
from powmon.common.schema.readings import MAX_BATCH, batch_frames, pack_row
from powmon.common.schema.status import ReaderProgress
from powmon.readers.numbering import Sample

payload_log = logging.getLogger(PAYLOAD_LOGGER)
_pack: Final = pack_row

Converter = Callable[[float, Calibration, int], tuple[float, float, float, int]]


def new_session_id() -> str:
    """12 hex digits: unique per process start, short enough for CSV rows."""
    return os.urandom(6).hex()  # what secrets.token_hex does, without loading OpenSSL


@dataclass(slots=True)
class Counters:
    """What the heartbeat reports; field names are the documented counter keys.

    session, seq, readings, replay, replay_key, last_reading_ns, problem and waiting_for_port
    are the reader's progress, the part of its heartbeat other processes rely on: they travel
    as schema.ReaderProgress.
    """

    session: str
    port: str
    seq: int = 0
    readings: int = 0
    bad_lines: int = 0
    timeouts: int = 0
    reconnects: int = 0
    disconnects: int = 0
    skipped_slots: int = 0
    connected: bool = False
    last_reading_ns: int = 0
    firmware: str = ""
    replay: str = ""  # the replay endpoint (common.replay); empty when REPLAY_BUFFER is 0
    replay_key: str = ""  # its CURVE public key (Z85); empty without CURVE
    mode: str = ""  # how the device is read: "stream" or "poll" (request/answer)
    stream_hz: int = 0  # the rate the device streams at, 0 when polled
    frames_corrupt: int = 0  # stream frames that failed their check: skipped
    device_holes: int = 0  # holes in the device's sample numbers (frames lost or corrupt) ...
    device_lost: int = 0  # ... and the samples in them, named to the sinks (device_dropped)
    resets: int = 0  # streams restarted after the device reset, stopped or went silent
    problem: str = ""  # why there is no device right now, one line ("" when connected)
    waiting_for_port: bool = False  # the port itself cannot be opened: retrying it

    def snapshot(self) -> dict[str, Any]:
        """The counters that are not progress (those go as `progress()`)."""
        return {
            "port": self.port, "bad_lines": self.bad_lines, "timeouts": self.timeouts,
            "reconnects": self.reconnects, "disconnects": self.disconnects,
            "skipped_slots": self.skipped_slots, "connected": self.connected,
            "firmware": self.firmware, "mode": self.mode, "stream_hz": self.stream_hz,
            "frames_corrupt": self.frames_corrupt, "device_holes": self.device_holes,
            "device_lost": self.device_lost, "resets": self.resets,
        }

    def progress(self) -> ReaderProgress:
        return ReaderProgress(
            self.session, self.seq, self.readings, self.replay, self.last_reading_ns,
            self.replay_key, self.problem, self.waiting_for_port,
        )


class Emitter:
    """Builds, holds, publishes and remembers readings for one sensor, numbering them without
    gaps.

    Readings wait here at most `interval` (PUBLISH_INTERVAL) and go out together, as one batch
    message: the cost of the bus is per message (a send wakes ZeroMQ's I/O thread, the broker
    and every subscriber), and nobody reads a power value faster than a screen refreshes. A
    reading that arrives when the last publish is at least `interval` old goes at once, so at
    rates below one reading per interval every reading is its own message, as with interval 0.
    Each reading is packed once (schema.pack_row); the message, the replay ring and replay
    answers reuse those bytes. Seq, `readings` and the ring move when a batch is published:
    a heartbeat's seq never names a reading still held here.
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
        self._rows: list[bytes] = []  # packed, not published yet
        self._last_ns = 0  # ts_ns of the last row held
        self._dropped = 0  # device samples lost just before the first row held
        self._published = -float("inf")  # monotonic time of the last publish
        self._arrived = -float("inf")  # monotonic time readings last arrived
        self.messages = 0

    @property
    def deadline(self) -> float:
        """When what is held must go (monotonic); inf when nothing is held."""
        return self._published + self.interval if self._rows else float("inf")

    @property
    def held(self) -> int:
        return len(self._rows)

    def emit(self, raw: float, ts_ns: int, flags: int, convert: Converter) -> None:
        """One reading (request/answer mode): converted, packed, held or published."""
        volts, amps, watts, flags = convert(raw, self._cal, flags)
        self._rows.append(_pack((ts_ns, raw, volts, amps, watts, flags)))
        self._last_ns = ts_ns
        self._due()

    def emit_samples(
        self, samples: Sequence[Sample], stamps: Sequence[int], convert: Converter,
        dropped: int = 0,
    ) -> None:
        """Consecutive stream samples timed at `stamps` (UTC ns), with the flags the device
        reported; `dropped` device samples were lost just before the first (they take no seq:
        the message that carries the first names them)."""
        if dropped:
            self.publish()  # what is held came before the hole: its message must not name it
            self._dropped = dropped
        if not samples:
            if dropped:
                self.publish()  # a loss with no reading after it (yet): said at once
            return
        cal, rows = self._cal, self._rows
        for sample, ts_ns in zip(samples, stamps, strict=True):
            raw = sample.raw
            volts, amps, watts, flags = convert(raw, cal, sample.flags)
            rows.append(_pack((ts_ns, raw, volts, amps, watts, flags)))
        self._last_ns = stamps[-1]
        self._due()

    def _due(self) -> None:
        """Publish when the interval is over, or when the next reading, expected one gap
        (the time since the last arrival) from now, would come after it: waiting for it would
        only make the held ones late (a 10 Hz sensor at PUBLISH_INTERVAL 0.1 publishes every
        reading at once, whatever its jitter)."""
        now = self._clock()
        gap, self._arrived = now - self._arrived, now
        if len(self._rows) >= MAX_BATCH or now + gap >= self._published + self.interval:
            self.publish()

    def publish_due(self, now: float) -> None:
        """Publish what is held if its interval is over (the reader's loops call this at
        `deadline`)."""
        if self._rows and now >= self._published + self.interval:
            self.publish()

    def publish(self) -> None:
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
        self._published = self._clock()
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
