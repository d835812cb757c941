"""One reader session's identity and counters: what its heartbeat reports.

A session starts with the process; `(sensor_id, session, seq)` names each reading everywhere
downstream, so seq only moves when a reading is actually published (emitter.py): a skipped
bad line leaves no gap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from powmon.common.schema.status import ReaderProgress


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
