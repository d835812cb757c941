"""A real broker and a real uplink process, a PUB for readings and a SUB for the uplink's
heartbeat: the frame of every end-to-end uplink test (HTTP, InfluxDB, MQTT)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
import zmq

from powmon.common.schema.readings import Reading, encode_reading
from powmon.common.schema.status import decode_status
from powmon.common.transport import pub_socket, sub_socket
from tests.helpers import Proc, python_module, wait_until, write_settings


class UplinkRun:
    """Broker + uplink for a settings file made of `overrides` (spool: data/spool.sqlite3)."""

    def __init__(self, tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
                 ctx: zmq.Context[zmq.Socket[bytes]], **overrides: Any) -> None:
        self.spawn = spawn
        self.settings = write_settings(
            tmp_path / "settings.yaml", [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}],
            UPLINK_SPOOL="spool.sqlite3", **overrides,
        )
        self.spool_path = tmp_path / "data" / "spool.sqlite3"
        data = yaml.safe_load(self.settings.read_text())
        broker(self.settings)
        self.pub = pub_socket(ctx, data["BROKER_FRONTEND"], 100_000, curve=None)
        self.status_sub = sub_socket(
            ctx, data["BROKER_BACKEND"], [b"status/uplink/"], 1000, curve=None
        )
        self.counters: dict[str, Any] = {}
        self.uplink = self.start_uplink()

    def start_uplink(self) -> Proc:
        self.counters = {}
        argv = python_module("powmon.uplink", "--config", str(self.settings))
        return self.spawn(argv, "uplink")

    def publish(self, session: str, seqs: Iterable[int], sensor: str = "VIC",
                ts_ns: Callable[[int], int] | None = None) -> list[Reading]:
        sent = []
        for seq in seqs:
            ts = time.time_ns() if ts_ns is None else ts_ns(seq)
            r = Reading(sensor, session, seq, ts, 512.0 + seq % 7, 0.02, 0.3 + seq / 1000, 1.5)
            self.pub.send_multipart(encode_reading(r))
            sent.append(r)
        return sent

    def status(self) -> dict[str, Any]:
        """The latest heartbeat counters of the uplink (drains the status socket)."""
        while True:
            try:
                frames = self.status_sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return self.counters
            self.counters = dict(decode_status(frames).counters)

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 30.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            counters = self.status()
            return counters if counters and predicate(counters) else None

        found = wait_until(ready, timeout, what=what)
        assert found is not None
        return found
