"""`powmon sim` as a real child process: paths on stdout, real ptys, stdin commands, SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import serial
from click.testing import CliRunner

from powmon.sim.cli import sim_command
from powmon.sim.device import BOOT_CHATTER
from tests.streams import StreamClient

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")

DEADLINE = 20.0  # generous: a loaded 2-core CI machine


class SimProcess:
    """`python -m powmon sim ...` with stdin and stdout piped, stdout read line by line."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "powmon", "sim", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.popen.stdout is not None
        self._pump_thread = threading.Thread(
            target=self._pump, args=(self.popen.stdout,), daemon=True
        )
        self._pump_thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.put(raw.decode().rstrip("\n"))

    def line(self) -> str:
        """The next stdout line, or fail the test at the deadline."""
        try:
            return self.lines.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError(f"no stdout line within {DEADLINE}s") from None

    def send(self, command: str) -> str:
        assert self.popen.stdin is not None
        self.popen.stdin.write(command.encode() + b"\n")
        self.popen.stdin.flush()
        return self.line()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._pump_thread.join(DEADLINE)  # stdout reaches EOF once the process is gone
        for stream in (self.popen.stdin, self.popen.stdout, self._stderr):
            if stream is not None:
                stream.close()
        return self.popen.returncode


StartSim = Callable[[list[str]], SimProcess]


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[StartSim]:
    """Start `powmon sim` children; at teardown make sure they are gone and pipes closed."""
    procs: list[SimProcess] = []

    def start(args: list[str]) -> SimProcess:
        proc = SimProcess(args, tmp_path / f"sim-{len(procs)}.err")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop(signal.SIGKILL)


def read_value(path: str) -> tuple[serial.SerialBase, float]:
    """Open a simulated port, skip the boot chatter, return the port and one reading."""
    port = serial.serial_for_url(path, baudrate=115200, timeout=2)
    port.write(b"read \n")
    line = port.readline()
    if line == BOOT_CHATTER:
        line = port.readline()
    return port, float(line)


@pytest.mark.e2e
def test_cli_serves_two_sensors_and_stops_on_sigterm(start_sim: StartSim, tmp_path: Path) -> None:
    """Prints 'ID PATH' per sensor, answers reads there, exits 0 on SIGTERM, removes links."""
    links = tmp_path / "links"
    sim = start_sim(["VIC:amps=2.5", "ATT:amps=4,ac=50", "--link-dir", str(links)])
    assert sim.line() == f"VIC {links / 'VIC'}"
    assert sim.line() == f"ATT {links / 'ATT'}"
    port, value = read_value(str(links / "VIC"))
    with port:
        assert value == round((2.5 + 2.5 * 0.066) / 5 * 1024)
    with serial.serial_for_url(str(links / "ATT"), baudrate=115200, timeout=2) as att:
        att.write(b"mode ac 50 5\n")
        answers = [att.readline(), att.readline()]
        assert answers[0] == BOOT_CHATTER
        assert answers[1] == b"ok ac 50 5\r\n"
        att.write(b"read\n")
        assert float(att.readline()) == pytest.approx(4 * 0.066 / 5 * 1024, rel=0.02)
    assert sim.stop() == 0
    assert not (links / "VIC").exists()
    assert not (links / "ATT").exists()


@pytest.mark.e2e
def test_cli_stdin_faults_unplug_and_replug(start_sim: StartSim, tmp_path: Path) -> None:
    """stdin commands inject faults, unplug (open port fails) and replug (path works again)."""
    links = tmp_path / "links"
    sim = start_sim(["VIC:amps=0", "--link-dir", str(links)])
    path = sim.line().split()[1]
    port, value = read_value(path)
    assert value == 512
    assert sim.send("nonnumeric VIC") == "ok nonnumeric VIC"
    port.write(b"read\n")
    assert port.readline() == b"abc\r\n"
    assert sim.send("garbage VIC 2") == "ok garbage VIC 2"
    for _ in range(2):
        port.write(b"read\n")
        assert port.readline()[0] >= 0x80
    assert sim.send("unplug VIC") == "ok unplug VIC"
    with pytest.raises(serial.SerialException):
        port.write(b"read\n")
        port.readline()
        port.readline()
    port.close()
    assert not os.path.lexists(path)
    assert sim.send("replug VIC").startswith("ok replug VIC ")
    again, value = read_value(path)
    with again:
        assert value == 512
    assert sim.send("explode VIC").startswith("error: unknown command")
    assert sim.send("silence NOPE").startswith("error: unknown sensor")
    assert sim.send("silence VIC 0").startswith("error: expected a count")
    assert sim.stop() == 0


@pytest.mark.e2e
def test_cli_keeps_serving_after_stdin_eof(start_sim: StartSim) -> None:
    """CI has no stdin: EOF on stdin does not stop the simulator; SIGINT stops it cleanly."""
    sim = start_sim([])
    sensor_id, path = sim.line().split()
    assert sensor_id == "SIM"
    assert sim.popen.stdin is not None
    sim.popen.stdin.close()
    port, value = read_value(path)
    with port:
        assert value == round((2.5 + 0.066) / 5 * 1024)  # the default sensor: 1 A DC
    assert sim.popen.poll() is None
    assert sim.stop(signal.SIGINT) == 0


@pytest.mark.e2e
def test_cli_rejects_a_bad_sensor_spec(start_sim: StartSim) -> None:
    """A typo in a sensor spec exits 2 with a message naming it, before any pty exists."""
    sim = start_sim(["VIC:amp=2"])
    assert sim.popen.wait(DEADLINE) == 2
    sim.stop()
    err = sim.stderr_path.read_text()
    assert "unknown parameter(s) 'amp'" in err


def test_help_says_posix_only_and_lists_commands() -> None:
    """--help documents the stdin commands and that ptys need a POSIX system."""
    result = CliRunner().invoke(sim_command, ["--help"])
    assert result.exit_code == 0
    assert "POSIX only" in result.output
    assert "unplug ID" in result.output
    assert "corrupt|dropbytes|dropframe ID [N]" in result.output
    assert "--link-dir" in result.output


@pytest.mark.e2e
def test_cli_stream_faults_and_reset(start_sim: StartSim) -> None:
    """stdin commands spoil stream frames (`corrupt ID N`, `dropframe ID`) and reset the board
    (`reset ID`, which takes no count): the host counts them and sees the boot chatter."""
    sim = start_sim(["VIC:amps=1,drift=200,seed=3", "--baud", "115200"])
    path = sim.line().split()[1]
    with serial.serial_for_url(path, baudrate=115200, timeout=0.2) as port:
        client = StreamClient(port)
        client.start(1000)
        client.read_samples(100)
        assert sim.send("corrupt VIC 2") == "ok corrupt VIC 2"
        assert sim.send("dropframe VIC") == "ok dropframe VIC"
        client.read_samples(100)
        assert sim.send("reset VIC 2").startswith("error: expected 'reset ID'")
        assert sim.send("reset VIC") == "ok reset VIC"
        chatter = BOOT_CHATTER.strip(b"\x00\xff\r\n")
        client.read_until(lambda: chatter in client.lines, what="the boot chatter")
    c = client.decoder.counters
    assert (c.corrupt, c.holes, c.lost) == (2, 1, 30)
    assert sim.stop() == 0
