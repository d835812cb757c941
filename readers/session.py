"""One reader session: its identity, its counters, and turning answers into published readings.

A session starts with the process; `(sensor_id, session, seq)` names each reading everywhere
downstream, so seq only moves when a reading is actually published: a skipped bad line leaves
no gap. Everything here runs once per reading, so it does the minimum: convert, encode, send,
keep the payload in the replay ring, bump counters. No log formatting unless payload logging is on.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from powmon.common.conversion import Calibration
from powmon.common.logs import PAYLOAD_LOGGER
from powmon.common.replay import ReplayRing
from powmon.common.schema import ReaderProgress, Reading, encode_reading

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

    def snapshot(self) -> dict[str, Any]:
        """The counters that are not progress (those go as `progress()`)."""
        return {
            "port": self.port, "bad_lines": self.bad_lines, "timeouts": self.timeouts,
            "reconnects": self.reconnects, "disconnects": self.disconnects,
            "skipped_slots": self.skipped_slots, "connected": self.connected,
            "firmware": self.firmware,
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
            )  # fmt: skip
        return reading
