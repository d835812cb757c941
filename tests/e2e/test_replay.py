"""A reader's first readings reach the writer even when the bus was not there to carry them.

PUB drops what it sends before the broker's subscriptions reach it (the slow joiner), and all
of it while there is no broker at all. The writer sees the session start past seq 0 and asks
the reader's replay socket for the beginning.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from powmon.common.settings import load_settings
from powmon.readers import reader as reader_module
from powmon.readers.reader import ReaderConfig
from tests.helpers import Proc, data_rows, python_module, wait_until, write_settings

pytestmark = pytest.mark.e2e


def from_zero(data: Path, sensor: str, at_least: int) -> list[dict[str, str]]:
    """The sensor's rows once they hold seq 0..n-1 (n >= at_least) each once; else []."""
    found = [r for r in data_rows(data) if r["sensor_id"] == sensor]
    seqs = sorted(int(r["seq"]) for r in found)
    return found if len(seqs) >= at_least and seqs == list(range(len(seqs))) else []


def test_readings_published_before_the_broker_exists_are_replayed(
    tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc]
) -> None:
    """Reader and writer start with no broker; once it comes, seq 0.. are stored, replayed."""
    settings = write_settings(
        tmp_path / "settings.yaml", [{"PORT": "sim://NB?amps=1", "SENSORS_ID": "NB"}],
        POLLING_DELAY=0.02,
    )
    writer = spawn(python_module("powmon.writer", "--config", str(settings)), "writer")
    reader = spawn(python_module("powmon.readers", "--config", str(settings), "--sensor-id",
                                 "NB"), "reader")
    # The reader publishes seq 0 as it connects to the device: with no broker, into the void.
    wait_until(lambda: "connected firmware" in reader.output(), timeout=30, what="connected")
    broker(settings)
    found = wait_until(lambda: from_zero(tmp_path / "data", "NB", 100), timeout=30,
                       what="seq 0..99 stored")
    first = next(r for r in found if r["seq"] == "0")
    assert first["flags"] == "replayed"
    assert reader.stop(signal.SIGTERM) == 0
    assert writer.stop(signal.SIGTERM) == 0
    assert "lost sensor" not in writer.output()


def test_a_reader_that_does_not_wait_for_the_broker_still_delivers_seq_0(
    tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the start-up wait for the bus removed, replay alone brings seq 0.. to the writer."""
    settings = write_settings(
        tmp_path / "settings.yaml", [{"PORT": "sim://NW?amps=1", "SENSORS_ID": "NW"}],
        POLLING_DELAY=0.005,
    )
    broker(settings)
    writer = spawn(python_module("powmon.writer", "--config", str(settings)), "writer")
    wait_until(lambda: "writer up" in writer.output(), timeout=30, what="writer up")
    monkeypatch.setattr(reader_module, "BROKER_WAIT", 0.0)
    config = ReaderConfig.from_settings(load_settings(settings), "NW")
    stop = threading.Event()
    thread = threading.Thread(target=reader_module.run, args=(config, stop), daemon=True)
    thread.start()
    try:
        wait_until(lambda: from_zero(tmp_path / "data", "NW", 200), timeout=30,
                   what="seq 0..199 stored")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert writer.stop(signal.SIGTERM) == 0
    assert from_zero(tmp_path / "data", "NW", 200)
