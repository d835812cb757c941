"""A reader's run() on a thread of the test process, on a real sim:// port and real sockets.

    r = start_reader("amps=2.5&seed=1", sensor={"AVG": 4}, TIMEOUT=0.2)   # the fixture
    wait_until(lambda: r.bus.counters().get("readings", 0) >= 20, 10)
    r.finish()                                     # stop, then up to the last heartbeat

Each reader gets its own board name, so `r.device` is its simulated board alone.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from powmon.common.schema.status import STATE_STOPPED
from powmon.common.settings import load_settings
from powmon.readers.reader import ReaderConfig, run
from powmon.sim import protocol_sim
from powmon.sim.device import SimDevice
from tests.bus import Bus
from tests.helpers import wait_until, write_settings


@dataclass
class Running:
    thread: threading.Thread
    stop: threading.Event
    bus: Bus
    name: str
    config: ReaderConfig

    @property
    def device(self) -> SimDevice:
        return protocol_sim.devices[self.name]

    def finish(self) -> None:
        """Stop the reader, then take everything up to its final 'stopped' heartbeat."""
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        wait_until(lambda: any(s.state == STATE_STOPPED for s in self.bus.all_statuses()), 5)

    def counter(self, key: str) -> Any:
        return self.bus.counters().get(key, 0)


@dataclass
class ReaderStarter:
    """Starts readers on threads (`start_reader` fixture); `close()` stops what is left."""

    tmp_path: Path
    ctx: zmq.Context[zmq.Socket[bytes]]
    started: list[Running] = field(default_factory=list)

    def __call__(
        self, query: str, sensor: dict[str, Any] | None = None, **settings: Any
    ) -> Running:
        name = f"L{uuid.uuid4().hex[:8]}"
        entry = {"PORT": f"sim://{name}?{query}", "SENSORS_ID": name, **(sensor or {})}
        # A 10 ms period: a reader thread polling flat out would starve the test thread of the
        # GIL, and nothing here needs speed. Request/answer unless a test asks for streams.
        settings.setdefault("POLLING_DELAY", 0.01)
        settings.setdefault("STREAM", "off")
        path = write_settings(self.tmp_path / f"{name}.yaml", [entry], **settings)
        config = ReaderConfig.from_settings(load_settings(path), name)
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.bind(config.frontend)
        stop = threading.Event()
        thread = threading.Thread(target=run, args=(config, stop), daemon=True)
        running = Running(thread, stop, Bus(sub), name, config)
        self.started.append(running)
        thread.start()
        return running

    def close(self) -> None:
        for running in self.started:
            running.stop.set()
            running.thread.join(10)
            running.bus.sock.close()
