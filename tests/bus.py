"""A test subscriber that keeps every reading and status it gets, for asserting on the bus."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import zmq

from powmon.common.schema import Reading, Status, decode_reading, decode_status
from tests.helpers import wait_until


@dataclass
class Bus:
    """A SUB socket (on the broker's backend, or bound where a reader's PUB connects)."""

    sock: zmq.Socket[bytes]
    readings: list[Reading] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)

    def pump(self) -> None:
        """Take what has arrived (waiting up to 10 ms for the first), then return."""
        if not self.sock.poll(10):
            return
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frames[0].startswith(b"reading/"):
                self.readings.append(decode_reading(frames))
            else:
                self.statuses.append(decode_status(frames))

    def all_statuses(self) -> list[Status]:
        self.pump()
        return self.statuses

    def reader_statuses(self) -> list[Status]:
        self.pump()
        return [s for s in self.statuses if s.process == "reader"]

    def counters(self) -> dict[str, Any]:
        """The counters of the latest reader heartbeat ({} before the first)."""
        mine = self.reader_statuses()
        return dict(mine[-1].counters) if mine else {}

    def wait_counter(self, key: str, at_least: int, timeout: float = 15.0) -> None:
        wait_until(lambda: self.counters().get(key, 0) >= at_least, timeout,
                   what=f"counter {key} >= {at_least}")  # fmt: skip
