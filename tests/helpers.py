"""Small synchronisation and process helpers shared by the tests (no sleeps as synchronisation)."""

from __future__ import annotations

import csv
import os
import pty
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
import yaml

from powmon.base.storage import FileNaming, list_files, open_text

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what or predicate}")
        time.sleep(interval)


def _below_ephemeral() -> range:
    """Ports the kernel never hands out itself (to a bind on port 0, or as a connect()'s local
    port): those below Linux's ephemeral range (32768-60999 by default)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, low) if low > 12000 else range(low, 65536)  # else: the old risk


PORTS = _below_ephemeral()
_next_port: list[int] = []


def free_tcp_port() -> int:
    """A loopback port no one listens on, for a server that must be told its port (a bus
    endpoint, mosquitto, influxd), from a slice of ports this pytest worker alone hands out.

    Port 0's answer would be freed before the server binds, and in that while the kernel may
    give the same port to another worker's test (its own port 0 or any outgoing connection's
    local port): the server's bind fails, or a restarted server (an outage) finds its port
    taken. Below the ephemeral range nothing is handed out by the kernel, and each xdist
    worker (PYTEST_XDIST_WORKER gwN) walks its own slice, from a random start so that a
    second test run on the machine rarely walks the same ports; a port still bound by anyone
    (a lingering process, the other run) is skipped.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = len(PORTS) // max(workers, 1)
    first = PORTS.start + worker % max(workers, 1) * size
    if not _next_port:
        _next_port.append(secrets.randbelow(size))
    for _ in range(size):
        port = first + _next_port[0] % size
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port in {first}..{first + size - 1}")


def free_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


def write_settings(path: Path, sensors: Sequence[dict[str, Any]], **overrides: Any) -> Path:
    """A settings.yaml for tests: loopback endpoints on free ports, data under path's folder."""
    data: dict[str, Any] = {
        "SENSORS": list(sensors),
        "BUDRATE": 115200,
        "TIMEOUT": 0.5,
        "POLLING_DELAY": 0.0,
        "LOCAL_DATA_ROOT": "data",
        "LOCAL_DATA_FILE": "data.csv",
        "LOG_LEVEL": 1,
        "BROKER_FRONTEND": free_endpoint(),
        "BROKER_BACKEND": free_endpoint(),
        "HEARTBEAT_INTERVAL": 0.2,
        "FLUSH_INTERVAL": 0.1,
    }
    data.update(overrides)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


class Proc:
    """A child process started by a test, stopped for sure at teardown."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig`, wait with a deadline, kill if needed; return the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def on_terminal(argv: Sequence[str], columns: int, lines: int,
                timeout: float = 60.0) -> tuple[int | None, str]:
    """Run argv on a pseudo-terminal of that size until it exits (or `timeout`, then kill it);
    return its exit code and everything it drew."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": str(lines), "TERM": "xterm"}
    proc = subprocess.Popen(list(argv), stdin=follower, stdout=follower, stderr=follower,
                            env=env)
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.2)[0]:
                try:
                    screen += os.read(leader, 65536)
                except OSError:
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        os.close(leader)
    return proc.returncode, screen.decode(errors="replace")


def data_rows(data: Path, stem: str = "data") -> list[dict[str, str]]:
    """Every row of the writer's data files (not gaps.csv), in file order, compressed or not
    (read through base.storage, as every tool reads them). A last line with no newline yet is
    a write in progress (the test reads while the writer appends) and is left out; a torn row
    left behind is looked for with csv.reader by the tests about it. A file compressed while
    it is read (its original removed) makes the reading start again."""
    naming = FileNaming.from_data_file(f"{stem}.csv")
    while True:
        try:
            return [row for _, path in list_files(data, naming) for row in _file_rows(path)]
        except FileNotFoundError:
            continue  # the folder changed under the listing: read it again


def _file_rows(path: Path) -> list[dict[str, str]]:
    with open_text(path) as f:
        text = f.read()
    return list(csv.DictReader(text[: text.rfind("\n") + 1].splitlines()))


def pids_running(settings: Path, module: str | None = None) -> list[int]:
    """PIDs of processes started with this (unique) settings path, running `module` if given.

    Reads /proc, so the tests that use it are Linux-only (as CI is).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = [
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue
        if str(settings) in args and (module is None or module in args):
            found.append(int(entry.name))
    return found


REQUIRE_ENV = "POWMON_REQUIRE"


def required_in_ci(tool: str) -> bool:
    """Whether .ci/run installed `tool` (listed in $POWMON_REQUIRE), so its absence is a bug."""
    return tool in os.environ.get(REQUIRE_ENV, "").split()


def unavailable(tool: str, reason: str) -> NoReturn:
    """Skip a test whose external tool is missing, outside CI; fail it where CI installed it.

    A test that skips in CI because an install step broke would hide the very thing it tests.
    """
    if required_in_ci(tool):
        pytest.fail(f"{tool} is required here ({REQUIRE_ENV}) but unavailable: {reason}")
    pytest.skip(f"{tool} unavailable: {reason}")


Key = tuple[str, str, int]


def data_keys(data: Path) -> list[Key]:
    """(sensor_id, session, seq) of every stored row, in file order (duplicates kept)."""
    return [(r["sensor_id"], r["session"], int(r["seq"])) for r in data_rows(data)]


def data_streams(data: Path) -> dict[tuple[str, str], list[int]]:
    """The stored seqs of each (sensor_id, session), in file order."""
    out: dict[tuple[str, str], list[int]] = {}
    for sensor, session, seq in data_keys(data):
        out.setdefault((sensor, session), []).append(seq)
    return out


def lost_rows(data: Path, name: str = "gaps.csv") -> list[dict[str, str]]:
    """The rows of a loss log (gaps.csv); [] when there is none."""
    path = data / name
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def published_by(proc: Proc, sensors: int, timeout: float = 10.0) -> dict[str, int]:
    """`published()` of a process's log once it names `sensors` readers (a child's last lines
    can reach the shared log file a moment after its parent has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        log = proc.output()
        got = published(log)
        if len(got) >= sensors:
            return got
        if time.monotonic() > deadline:
            tail = "\n".join(log.splitlines()[-40:])
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for 'reader stop' "
                                 f"lines of {sensors} readers; the log ends:\n{tail}")
        time.sleep(0.02)


def published(log: str) -> dict[str, int]:
    """sensor -> readings published, from each reader's 'reader stop' line in a log."""
    return {m[1]: int(m[2]) for m in re.finditer(r"reader stop sensor=(\S+) readings=(\d+)", log)}
