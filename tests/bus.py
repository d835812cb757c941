"""A test subscriber that keeps every reading and status it gets, for asserting on the bus."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from powmon.common.errors import SchemaError
from powmon.common.schema.readings import Reading, ReadingBatch, decode_batch
from powmon.common.schema.status import Status, decode_status
from powmon.common.settings import load_settings
from tests.helpers import wait_until


@dataclass
class Bus:
    """A SUB socket (on the broker's backend, or bound where a reader's PUB connects)."""

    sock: zmq.Socket[bytes]
    readings: list[Reading] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    batches: list[ReadingBatch] = field(default_factory=list)  # every reading message, decoded
    arrived: list[int] = field(default_factory=list)  # time.time_ns() each batch was taken

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
                batch = decode_batch(frames)
                self.batches.append(batch)
                self.arrived.append(time.time_ns())
                self.readings += batch.readings
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
                   what=f"counter {key} >= {at_least}")


Ctx = zmq.Context[zmq.Socket[bytes]]


class BusEnd:
    """The test's end of the bus: a PUB on the frontend, a SUB for every heartbeat."""

    def __init__(self, ctx: Ctx, settings: Path) -> None:
        conf = load_settings(settings)
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 1_000_000)
        self.pub.connect(conf.broker_frontend)
        self.status = ctx.socket(zmq.SUB)
        self.status.setsockopt(zmq.SUBSCRIBE, b"status/")
        self.status.connect(conf.broker_backend)
        self.latest: dict[str, dict[str, Any]] = {}

    def counters(self, process: str) -> dict[str, Any]:
        while self.status.poll(0):
            try:
                status = decode_status(self.status.recv_multipart())
            except SchemaError:
                continue  # the test's own junk status messages come back here too
            self.latest[status.process] = dict(status.counters)
        return self.latest.get(process, {})

    def wait(self, process: str, what: str, check: Callable[[dict[str, Any]], bool],
             timeout: float = 30.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            seen = self.counters(process)
            return seen if seen and check(seen) else None

        found = wait_until(ready, timeout, what=f"{process}: {what}; last {self.latest}")
        assert found is not None
        return found

    def close(self) -> None:
        self.pub.close(linger=0)
        self.status.close(linger=0)
