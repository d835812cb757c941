"""Unplug and replug a simulated board 20 times under a real reader: no crash, no leak.

Each outage must show up as one disconnect and one reconnect in the heartbeat counters, with
readings flowing again after every replug, and the reader process must end with the same
number of open file descriptors and threads as it had after its first connect: a reconnect
loop that forgot to close a port or join a thread would grow them by one per outage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from powmon.common.schema.envelope import READING_PREFIX, STATUS_PREFIX
from powmon.common.schema.readings import decode_readings
from powmon.common.schema.status import decode_status
from powmon.common.settings import load_settings
from powmon.sim.device import SignalSpec, SimDevice
from powmon.sim.pty import PtySimulator
from tests.helpers import Proc, python_module, wait_until, write_settings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminals and /proc/<pid>/fd"),
]

OUTAGES = 20
SLACK = 2  # fds/threads that may come and go on their own (a zmq reconnect, a monitor pipe)


class Bus:
    """The test's subscriber: the reader's latest counters and a count of its readings."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], backend: str) -> None:
        self.sock = ctx.socket(zmq.SUB)
        for topic in (READING_PREFIX, STATUS_PREFIX):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(backend)
        self.readings = 0
        self.counters: dict[str, Any] = {}
        self.statuses = 0

    def pump(self) -> None:
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            if frames[0].startswith(READING_PREFIX):
                self.readings += len(decode_readings(frames))
                continue
            status = decode_status(frames)
            self.statuses += 1
            if status.process == "reader":
                self.counters = dict(status.counters)

    def reached(self, counter: str, n: int) -> Callable[[], bool]:
        return lambda: int(self.counters.get(counter, 0)) >= n

    def more_readings(self, n: int) -> Callable[[], bool]:
        start = self.readings
        return lambda: self.readings > start + n

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
        def ready() -> bool:
            self.pump()
            return check()

        wait_until(ready, timeout, interval=0.01, what=f"{what} (last counters {self.counters})")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_twenty_replugs_reconnect_every_time_without_leaking(
    tmp_path: Path,
    broker: Callable[[Path], Proc],
    spawn: Callable[..., Proc],
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """20 outages: 20 disconnects, 20 reconnects, readings after each; same fds and threads."""
    device = SimDevice(SignalSpec(amps=1.0, seed=3), "PLUG")
    with PtySimulator(device, link=tmp_path / "ttyPLUG") as sim:
        settings = write_settings(tmp_path / "settings.yaml",
                                  [{"PORT": sim.path, "SENSORS_ID": "PLUG"}],
                                  POLLING_DELAY=0.005, TIMEOUT=0.3,
                                  HEARTBEAT_INTERVAL=0.05)
        broker(settings)
        bus = Bus(zmq_ctx, load_settings(settings).broker_backend)
        try:
            bus.wait("the broker's heartbeat", lambda: bus.statuses > 0)
            reader = spawn(python_module("powmon.readers", "--sensor-id", "PLUG", "--config",
                                         str(settings)), "reader")
            bus.wait("first readings", lambda: bus.readings >= 20)
            fds, threads = _fds(reader.pid), _threads(reader.pid)
            for outage in range(1, OUTAGES + 1):
                sim.unplug()
                bus.wait(f"disconnect {outage}", bus.reached("disconnects", outage))
                sim.replug()
                bus.wait(f"reconnect {outage}", bus.reached("reconnects", outage))
                bus.wait(f"readings after replug {outage}", bus.more_readings(5))
                assert reader.popen.poll() is None, reader.output()
            assert (bus.counters["disconnects"], bus.counters["reconnects"]) == (OUTAGES, OUTAGES)
            assert abs(_fds(reader.pid) - fds) <= SLACK, (fds, os.listdir(f"/proc/{reader.pid}/fd"))
            assert abs(_threads(reader.pid) - threads) <= SLACK, threads
            assert reader.stop() == 0, reader.output()
        finally:
            bus.sock.close()
    log = reader.output()
    assert "Traceback" not in log
    # 20 outages in ~10 s: the per-outage warnings are rate-limited to a handful of lines.
    assert sum(" WARNING " in line for line in log.splitlines()) <= 6, log
