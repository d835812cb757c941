"""Fixtures: real processes, real sockets, loopback only, and teardown that always cleans up."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import zmq

from tests.bus import BusEnd
from tests.helpers import Proc, python_module
from tests.readerrun import ReaderStarter


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first, then the other end-to-end ones, then the unit tests (stable: each
    module keeps its order). xdist hands tests out in this order, so the long ones start at
    once on every worker and the many short ones fill in behind them, instead of one long
    test starting last and running alone. The order is only a schedule: every test stands
    alone, whatever runs before it."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("e2e") else 2

    items.sort(key=rank)


def _context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def zmq_ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A context whose sockets get linger 0, so a failing test can never hang at term()."""
    yield from _context()


@pytest.fixture
def other_ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A second such context: the sockets of another host (CURVE clients, tests/keys.py)."""
    yield from _context()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start child processes; at teardown SIGTERM them, wait with a deadline, then kill."""
    procs: list[Proc] = []

    def start(argv: Sequence[str], name: str = "proc", env: dict[str, str] | None = None) -> Proc:
        proc = Proc(argv, tmp_path / f"{name}-{len(procs)}.log", env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in reversed(procs):
        proc.stop(signal.SIGTERM)


@pytest.fixture
def broker(spawn: Callable[..., Proc]) -> Callable[[Path], Proc]:
    """Start a real powmon broker for a settings file."""

    def start(settings: Path) -> Proc:
        return spawn(python_module("powmon.broker", "--config", str(settings)), "broker")

    return start


@pytest.fixture
def bus_for(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Callable[[Path], BusEnd]]:
    """The test's end of the bus for a settings file: a PUB on the frontend, a status SUB."""
    buses: list[BusEnd] = []

    def make(settings: Path) -> BusEnd:
        buses.append(BusEnd(zmq_ctx, settings))
        return buses[-1]

    yield make
    for bus in buses:
        bus.close()


@pytest.fixture
def start_reader(
    tmp_path: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> Iterator[ReaderStarter]:
    """Readers on threads of this process, each on its own sim:// board (tests/readerrun.py)."""
    starter = ReaderStarter(tmp_path, zmq_ctx)
    yield starter
    starter.close()
