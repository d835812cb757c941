"""The reader as users run it: a real process on a real pty, through a real broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from powmon.common.schema.readings import Reading
from powmon.common.schema.status import STATE_STOPPED
from powmon.common.settings import load_settings
from powmon.sim.device import Fault, SignalSpec, SimDevice
from powmon.sim.pty import PtySimulator
from tests.bus import Bus
from tests.helpers import Proc, python_module, wait_until, write_settings

pytestmark = pytest.mark.e2e


@dataclass
class Rig:
    device: SimDevice
    sim: PtySimulator
    settings: Path
    bus: Bus
    reader: Proc

    def stop_reader(self) -> int:
        """SIGTERM the reader; then collect up to its last heartbeat ('stopped')."""
        code = self.reader.stop()
        wait_until(lambda: any(s.state == STATE_STOPPED for s in self.bus.reader_statuses()), 10,
                   what="the reader's final heartbeat")
        return code


def _is_subsequence(part: Sequence[float], whole: Sequence[float]) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


def _assert_gapless(readings: Sequence[Reading]) -> None:
    assert [r.seq for r in readings] == list(range(len(readings)))
    assert len({r.session for r in readings}) == 1
    assert {r.sensor_id for r in readings} == {"VIC"}


@pytest.fixture
def rig(
    tmp_path: Path,
    broker: Callable[[Path], Proc],
    spawn: Callable[..., Proc],
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
) -> Iterator[Rig]:
    device = SimDevice(SignalSpec(amps=2.5, noise=0.05, seed=7), "VIC")
    sim = PtySimulator(device, link=tmp_path / "ttyVIC").start()
    # PORT is a board that is not there: --port must win over it.
    # Request/answer (stream mode on a pty: test_reader_stream_e2e.py).
    settings = write_settings(tmp_path / "settings.yaml",
                              [{"PORT": "/dev/powmon-no-such-port", "SENSORS_ID": "VIC"}],
                              POLLING_DELAY=0.005, TIMEOUT=0.3, STREAM="off")
    backend = load_settings(settings).broker_backend
    broker(settings)
    sub = zmq_ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(backend)
    bus = Bus(sub)
    # The broker's own heartbeat coming through proves the subscription has propagated.
    wait_until(bus.all_statuses, 15, what="the broker's heartbeat")
    reader = spawn(python_module("powmon.readers", "--port", sim.path, "--sensor-id", "VIC",
                                 "--config", str(settings)), "reader")
    try:
        yield Rig(device, sim, settings, bus, reader)
    finally:
        sim.close()
        sub.close()


def test_readings_match_what_the_device_sent(rig: Rig) -> None:
    """Every answer becomes one reading, in order, seq 0..n-1; SIGTERM then exits 0."""
    rig.bus.wait_counter("readings", 100)
    assert rig.stop_reader() == 0
    readings = rig.bus.readings
    _assert_gapless(readings)
    assert len(readings) >= 100
    assert [r.raw for r in readings] == rig.device.sent
    final = rig.bus.reader_statuses()[-1]
    assert final.counters["readings"] == len(readings)
    assert final.counters["seq"] == len(readings)
    assert final.counters["bad_lines"] == 0
    assert final.counters["port"] == rig.sim.path
    assert final.counters["last_reading_ns"] == readings[-1].ts_ns
    assert all(540 <= r.raw <= 560 and r.amps == pytest.approx(2.5, abs=0.5) for r in readings)


def test_garbage_and_non_numeric_lines_are_survived_and_counted(rig: Rig) -> None:
    """Bad lines are counted in the heartbeat and skipped without consuming a seq."""
    rig.bus.wait_counter("readings", 20)
    rig.device.inject(Fault.GARBAGE)
    rig.device.inject(Fault.NONNUMERIC)
    rig.bus.wait_counter("bad_lines", 2)
    after = rig.bus.counters()["readings"]
    rig.bus.wait_counter("readings", after + 20)
    assert rig.stop_reader() == 0
    readings = rig.bus.readings
    _assert_gapless(readings)
    assert [r.raw for r in readings] == rig.device.sent  # the spoiled answers are in neither
    final = rig.bus.reader_statuses()[-1].counters
    assert final["bad_lines"] == 2
    assert final["timeouts"] == 0
    assert final["reconnects"] == 0


def test_unplugged_device_is_reconnected_and_seq_continues(rig: Rig) -> None:
    """Unplug: heartbeats say 'disconnected'; replug: the reader reconnects, seq goes on."""
    rig.bus.wait_counter("readings", 20)
    rig.sim.unplug()
    wait_until(lambda: rig.bus.counters().get("connected") is False, 15, what="disconnected")
    before = rig.bus.counters()
    seen = len(rig.bus.reader_statuses())
    # Alive but silent: heartbeats keep coming while the port is gone.
    wait_until(lambda: len(rig.bus.reader_statuses()) >= seen + 2, 15, what="more heartbeats")
    assert rig.bus.reader_statuses()[-1].state == "disconnected"
    rig.sim.replug()
    rig.bus.wait_counter("reconnects", 1, timeout=20)
    rig.bus.wait_counter("readings", before["readings"] + 20)
    assert rig.stop_reader() == 0
    readings = rig.bus.readings
    _assert_gapless(readings)
    assert readings[-1].seq >= before["seq"] + 20
    # The answers in flight when the cable was pulled may be lost (up to READ_PIPELINE of
    # them: a reader behind its schedule, on a loaded machine, has several requests out at
    # once); nothing else is.
    raws = [r.raw for r in readings]
    assert _is_subsequence(raws, rig.device.sent)
    in_flight = load_settings(rig.settings).sensors[0].read_pipeline
    assert len(rig.device.sent) - len(raws) <= in_flight
    final = rig.bus.reader_statuses()[-1].counters
    assert final["reconnects"] == 1
    assert final["disconnects"] == 1


def test_unknown_sensor_id_is_refused_with_exit_code_2(tmp_path: Path) -> None:
    """A --sensor-id not in SENSORS: one line naming the settings file and the known ids, exit 2."""
    settings = write_settings(tmp_path / "settings.yaml",
                              [{"PORT": "COM4", "SENSORS_ID": "VIC"},
                               {"PORT": "COM14", "SENSORS_ID": "ATT"}])
    done = subprocess.run(
        [sys.executable, "-m", "powmon.readers", "--sensor-id", "NOPE", "--config",
         str(settings)], capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "settings.yaml" in done.stderr
    assert "'NOPE'" in done.stderr
    assert "'VIC'" in done.stderr
    assert "'ATT'" in done.stderr
    assert "Traceback" not in done.stderr


def test_sim_url_port_works_in_a_real_process(
    tmp_path: Path, broker: Callable[[Path], Proc], spawn: Callable[..., Proc],
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """--port sim://VIC?... resolves through pyserial's URL handlers, with no device node."""
    settings = write_settings(tmp_path / "settings.yaml", [{"PORT": "COM4", "SENSORS_ID": "VIC"}],
                              POLLING_DELAY=0.01)
    broker(settings)
    sub = zmq_ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(load_settings(settings).broker_backend)
    bus = Bus(sub)
    wait_until(bus.all_statuses, 15, what="the broker's heartbeat")
    argv = ["--port", "sim://VIC?amps=2.5", "--sensor-id", "VIC", "--config", str(settings)]
    reader = spawn(python_module("powmon.readers", *argv), "reader")
    try:
        bus.wait_counter("readings", 10)
        assert reader.stop() == 0
        firmware = bus.counters()["firmware"]
    finally:
        sub.close()
    assert firmware.startswith("POWMON ")
    assert bus.readings
    assert all(r.amps == pytest.approx(2.5, abs=0.2) for r in bus.readings)
