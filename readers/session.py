"""One reader session: its identity, its counters, and turning answers into published readings.

A session starts with the process; `(sensor_id, session, seq)` names each reading everywhere
downstream, so seq only moves when a reading is actually published: a skipped bad line leaves
no gap. Everything here runs once per reading, so it does the minimum: convert, encode, send,
keep the payload in the replay ring, bump counters. No log formatting unless payload logging is on.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from powmon.common.conversion import Calibration
from powmon.common.logs import PAYLOAD_LOGGER
from powmon.common.replay import ReplayRing
from powmon.common.schema import (
    MAX_BATCH,
    ReaderProgress,
    Reading,
    Row,
    encode_reading,
    encode_readings,
)
from powmon.readers.numbering import Sample

payload_log = logging.getLogger(PAYLOAD_LOGGER)

Converter = Callable[[float, Calibration, int], tuple[float, float, float, int]]


def new_session_id() -> str:
    """12 hex digits: unique per process start, short enough for CSV rows."""
    return secrets.token_hex(6)


@dataclass(slots=True)
class Counters:
    """What the heartbeat reports; field names are the documented counter keys.

    session, seq, readings, replay, replay_key and last_reading_ns are the reader's progress,
    the part of its heartbeat other processes rely on: they travel as schema.ReaderProgress.
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
            self.replay_key,
        )


class Emitter:
    """Builds, publishes and remembers readings for one sensor, numbering them without gaps."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        sensor_id: str,
        cal: Calibration,
        counters: Counters,
        replay: int,
    ) -> None:
        self._sock = sock
        self._sensor_id = sensor_id
        self._cal = cal
        self.counters = counters
        # The last readings' payloads, for subscribers that missed some (common.replay);
        # appending to a bounded deque costs next to nothing and never grows.
        self.ring = ReplayRing(replay)

    def emit(self, raw: float, ts_ns: int, flags: int, convert: Converter) -> Reading:
        c = self.counters
        volts, amps, watts, flags = convert(raw, self._cal, flags)
        reading = Reading(self._sensor_id, c.session, c.seq, ts_ns, raw, volts, amps, watts, flags)
        frames = encode_reading(reading)
        # Two send() calls put the same two frames on the wire as send_multipart, cheaper
        # (pyzmq builds no Frame list; benchmarks/README.md); PUB never blocks, at HWM it drops.
        sock = self._sock
        sock.send(frames[0], zmq.SNDMORE)
        sock.send(frames[1])
        self.ring.append(c.seq, frames[1])
        c.seq += 1
        c.readings += 1
        c.last_reading_ns = ts_ns
        if payload_log.isEnabledFor(logging.DEBUG):
            payload_log.debug(
                "sensor=%s session=%s seq=%d raw=%s volts=%.5f amps=%.4f watts=%.3f flags=%d",
                self._sensor_id, c.session, reading.seq, raw, volts, amps, watts, flags,
            )
        return reading

    def emit_samples(
        self, samples: Sequence[Sample], stamps: Sequence[int], convert: Converter,
        dropped: int = 0,
    ) -> None:
        """Convert and publish consecutive stream samples timed at `stamps` (UTC ns); the
        flags are what the device reported. More than MAX_BATCH go in several messages."""
        cal = self._cal
        rows: list[Row] = []
        for sample, ts_ns in zip(samples, stamps, strict=True):
            raw = sample.raw
            volts, amps, watts, flags = convert(raw, cal, sample.flags)
            rows.append((ts_ns, raw, volts, amps, watts, flags))
        for start in range(0, len(rows), MAX_BATCH):
            self.emit_rows(rows[start : start + MAX_BATCH], dropped)
            dropped = 0

    def emit_rows(self, rows: Sequence[Row], dropped: int = 0) -> None:
        """Publish consecutive readings (ts_ns, raw, volts, amps, watts, flags) in one message:
        a batch when there are several. `dropped` device samples were lost just before the
        first (a hole in the device's numbers): the message names them to the sinks, which
        log them as lost; they take no seq. Rows may be empty when only a loss is to be said.
        """
        c = self.counters
        frames, payloads = encode_readings(self._sensor_id, c.session, c.seq, rows, dropped)
        sock = self._sock
        sock.send(frames[0], zmq.SNDMORE)
        sock.send(frames[1])
        ring = self.ring
        seq = c.seq
        for payload in payloads:
            ring.append(seq, payload)
            seq += 1
        if rows:
            c.seq = seq
            c.readings += len(rows)
            c.last_reading_ns = rows[-1][0]
            if payload_log.isEnabledFor(logging.DEBUG):
                self._log_rows(rows)

    def _log_rows(self, rows: Sequence[Row]) -> None:
        c = self.counters
        first = c.seq - len(rows)
        for i, (_ts, raw, volts, amps, watts, flags) in enumerate(rows):
            payload_log.debug(
                "sensor=%s session=%s seq=%d raw=%s volts=%.5f amps=%.4f watts=%.3f flags=%d",
                self._sensor_id, c.session, first + i, raw, volts, amps, watts, flags,
            )
