"""The simulated Arduino on a real pseudo-terminal, driven through real pyserial (POSIX)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from powmon.readers.frames import StreamParams
from powmon.sim.device import BOOT_CHATTER, Fault, SignalSpec, SimDevice
from powmon.sim.pty import PtySimulator
from tests.helpers import wait_until
from tests.streams import StreamClient

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[PtySimulator]:
    """A noisy 2.5 A DC sensor behind a pty, reachable through a stable link."""
    device = SimDevice(SignalSpec(amps=2.5, noise=0.05, seed=3), sensor_id="VIC")
    with PtySimulator(device, link=tmp_path / "ttyVIC") as simulator:
        yield simulator


def open_port(path: str, timeout: float = 1.0) -> serial.SerialBase:
    return serial.serial_for_url(path, baudrate=115200, timeout=timeout)


def ask(port: serial.SerialBase, request: bytes = b"read \n") -> bytes:
    port.write(request)
    return port.readline()


def test_reads_through_pyserial_match_device(sim: PtySimulator) -> None:
    """The host's parsed answers are exactly the values the device says it sent."""
    assert Path(sim.path).is_symlink()
    with open_port(sim.path) as port:
        assert ask(port) == BOOT_CHATTER  # the open rebooted the board
        values = [float(port.readline())]
        values += [float(ask(port)) for _ in range(30)]
    assert values == sim.device.sent
    assert all(500 < v < 600 for v in values)


def test_raw_mode_no_echo_no_translation(sim: PtySimulator) -> None:
    """The pty is raw: \\r reaches the device unchanged and nothing is echoed back."""
    with open_port(sim.path, timeout=0.2) as port:
        assert ask(port, b"r\r\n") == BOOT_CHATTER
        assert port.readline() == b"ok\r\n"
        assert ask(port, b"id\r\n") == b"POWMON 1.1.0 SIM-VIC stream\r\n"
        assert port.read(100) == b""  # no echo of the requests


def test_reopen_reboots_the_board(sim: PtySimulator) -> None:
    """Every open is a DTR reset: chatter again, and modes set before are forgotten."""
    with open_port(sim.path) as port:
        assert ask(port, b"avg 4\n") == BOOT_CHATTER
        assert port.readline() == b"ok avg 4\r\n"
        assert b"." in ask(port)
        assert sim.host_open
    wait_until(lambda: not sim.host_open, what="the simulator to see the close")
    with open_port(sim.path) as port:
        assert ask(port) == BOOT_CHATTER
        assert b"." not in port.readline()


def test_no_chatter_when_disabled(tmp_path: Path) -> None:
    """boot_chatter=False: the first line after open is the first answer."""
    device = SimDevice(SignalSpec(boot_chatter=False))
    with PtySimulator(device) as sim, open_port(sim.path) as port:
        assert sim.path.startswith("/dev/")
        assert ask(port) == b"512\r\n"


def test_overlong_input_recovers(sim: PtySimulator) -> None:
    """200 bytes without a newline overflow the RX buffer (`err`); the next line is answered."""
    with open_port(sim.path) as port:
        port.write(b"x" * 200 + b"\nr \n")
        assert port.readline() == BOOT_CHATTER
        assert port.readline() == b"err\r\n"
        assert port.readline() == b"ok\r\n"


def test_fault_through_pty(sim: PtySimulator) -> None:
    """Injected faults reach the host as bytes on the wire."""
    with open_port(sim.path, timeout=0.2) as port:
        ask(port, b"r\n")
        assert port.readline() == b"ok\r\n"
        sim.device.inject(Fault.NONNUMERIC)
        sim.device.inject(Fault.PARTIAL)
        assert ask(port) == b"abc\r\n"
        partial = ask(port)
        assert partial.isdigit()  # no line end: readline gave up at the timeout
        assert float(partial) not in sim.device.sent


def test_unplug_fails_the_open_port_and_replug_reconnects(sim: PtySimulator) -> None:
    """unplug: the open port errors or reads EOF, the link goes; replug: the path works again."""
    port = open_port(sim.path)
    try:
        ask(port, b"r\n")
        assert port.readline() == b"ok\r\n"
        sim.unplug()
        assert not sim.plugged
        assert not os.path.lexists(sim.path)
        try:
            got = port.read(1)
        except serial.SerialException:
            got = b""
        assert got == b""
        with pytest.raises(serial.SerialException):
            port.write(b"read\n")
            port.flush()
    finally:
        port.close()
    with pytest.raises(serial.SerialException):
        open_port(sim.path)
    sim.replug()
    with open_port(sim.path) as again:
        assert ask(again) == BOOT_CHATTER
        assert float(again.readline()) == sim.device.sent[-1]


def test_replug_without_link_gives_a_new_path() -> None:
    """Without a link the path is the pty itself, which a replug replaces."""
    with PtySimulator(SimDevice(SignalSpec())) as sim:
        first = sim.path
        sim.replug()
        assert sim.path != "" and os.path.exists(sim.path)
        with open_port(sim.path) as port:
            ask(port, b"r\n")
            assert port.readline() == b"ok\r\n"
    assert not sim.plugged
    assert first.startswith("/dev/")


def test_link_refuses_to_replace_a_real_file(tmp_path: Path) -> None:
    """A link path that is a regular file is left alone (it is not ours)."""
    target = tmp_path / "precious"
    target.write_text("keep me")
    with pytest.raises(FileExistsError):
        PtySimulator(SimDevice(SignalSpec()), link=target).start()
    assert target.read_text() == "keep me"


def test_baud_pacing_takes_at_least_wire_time() -> None:
    """At 9600 baud, 50 exchanges cannot be faster than their bytes on a UART."""
    device = SimDevice(SignalSpec(amps=1.0, boot_chatter=False))
    with PtySimulator(device, baud=9600) as sim, open_port(sim.path, timeout=2) as port:
        started = time.monotonic()
        wire = 0
        for _ in range(50):
            answer = ask(port)
            assert answer.endswith(b"\r\n")
            wire += len(b"read \n") + len(answer)
        elapsed = time.monotonic() - started
    assert elapsed >= wire * 10 / 9600
    assert len(device.sent) == 50


def test_close_stops_the_thread() -> None:
    """close() ends the serving thread and closes the pty; a second close is harmless."""
    sim = PtySimulator(SimDevice(SignalSpec())).start()
    with pytest.raises(RuntimeError):
        sim.start()
    sim.close()
    sim.close()
    assert not sim.plugged


def stream_port(path: str) -> serial.Serial:
    """A concrete pyserial port (it has everything a stream client uses)."""
    return serial.Serial(path, 115200, timeout=0.2)


def test_stream_through_the_pty_is_what_the_board_sent() -> None:
    """`stream` over a real pty, paced at 115200 baud, with a corrupted frame, a frame that
    lost bytes and a lost frame: every decoded sample is one the board sent intact, the holes
    are exactly the spoiled frames, the rest of the numbers is complete, times are one period
    apart by the board's clock."""
    device = SimDevice(SignalSpec(amps=2.0, ac_hz=50.0, noise=0.05, seed=8, drift_ppm=150.0))
    with PtySimulator(device, baud=115200) as sim, stream_port(sim.path) as port:
        client = StreamClient(port)
        params = client.start(1000)
        assert params == StreamParams(1000, 1000, 10)
        for fault in (Fault.CORRUPT, Fault.DROPBYTES, Fault.DROPFRAME):
            client.read_samples(200)
            device.inject(fault)
        client.read_samples(200)
        assert client.stop()
    assert client.rows() == [(s.stream, s.seq, s.device_us, s.raw) for s in device.streamed]
    c = client.decoder.counters
    assert (c.corrupt, c.holes, c.lost) == (2, 3, 30)
    numbers = {s.seq for s in client.samples}
    assert len(numbers) + c.lost == max(numbers) + 1
    times = {s.seq: s.device_us for s in client.samples}
    assert all(times[n] == times[0] + n * 1000 for n in times)


def test_a_reset_mid_stream_is_seen_and_a_new_stream_recovers() -> None:
    """The board resets while streaming: its chatter arrives, frames stop; the host starts a
    new stream, numbered from 0 on a restarted clock, which the decoder counts as a reset."""
    device = SimDevice(SignalSpec(amps=1.0, seed=1), "VIC")
    with PtySimulator(device, baud=115200) as sim, stream_port(sim.path) as port:
        client = StreamClient(port)
        client.start(500)
        client.read_samples(300)
        device.inject(Fault.RESET)
        chatter = BOOT_CHATTER.strip(b"\x00\xff\r\n")
        client.read_until(lambda: chatter in client.lines, what="the boot chatter")
        client.start(500)
        client.read_samples(300)
        assert client.stop()
    first, second = client.rows(1), client.rows(2)
    assert [row[1] for row in second] == list(range(len(second)))
    assert second[0][2] < first[-1][2]  # the device clock started again
    assert client.decoder.counters.resets == 1
    assert client.rows() == [(s.stream, s.seq, s.device_us, s.raw) for s in device.streamed]
