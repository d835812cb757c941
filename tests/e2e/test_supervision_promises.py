"""Promises of `powmon run`'s supervision (docs/guarantees.md, "Supervision"), on real
processes, loopback only:

- Ctrl-C (SIGINT) stops every child and exits 0.
- kill -9 of `powmon run`: its children stop in order, readers first, then the writer and the
  uplink, the broker last (each child's lifeline grace).
- A broker, writer or uplink that exits 2 after the pipeline started (its endpoint or lock
  taken at a restart) stops the pipeline with exit 2 instead of being restarted in a loop.
- One uplink per spool: a second one exits 2 naming the holder.

Everything is synchronised on outcomes with wait_until; the supervisor is held with SIGSTOP
(not raced) while a test takes what its restarted child will find taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from powmon.common.lock import holder
from powmon.common.settings import Settings, load_settings
from tests.helpers import Proc, data_keys, pids_running, python_module, wait_until, write_settings
from tests.httpserver import RecordingServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc"),
]

SENSORS = [{"PORT": "sim://SA?amps=1&noise=0.01", "SENSORS_ID": "SA"}]
MODULES = {"broker": "powmon.broker", "writer": "powmon.writer", "uplink": "powmon.uplink",
           "reader": "powmon.readers"}


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as srv:
        yield srv


def pipeline_settings(tmp_path: Path, server: RecordingServer) -> Path:
    """One simulated sensor; the uplink posting JSON to the test's receiver."""
    return write_settings(
        tmp_path / "settings.yaml", SENSORS, POLLING_DELAY=0.02, REMOTE_SAVE=True,
        UPLINK_URL=server.url, UPLINK_FORMAT="json", UPLINK_BATCH_WAIT=0.1,
    )


def start_run(spawn: Callable[..., Proc], settings: Path) -> Proc:
    return spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], "run")


def children_up(settings: Path, run: Proc, server: RecordingServer) -> dict[str, int]:
    """Once rows are on disk and the receiver has some: the pid of each child by role."""
    data = load_settings(settings).data_root
    wait_until(lambda: data_keys(data), timeout=30, what="rows on disk")
    wait_until(server.delivered, timeout=30, what="a first upload")

    def one_each() -> dict[str, int]:
        found = {role: pids_running(settings, module) for role, module in MODULES.items()}
        ones = {role: pids[0] for role, pids in found.items() if len(pids) == 1}
        return ones if len(ones) == len(MODULES) else {}

    pids = wait_until(one_each, timeout=30, what="one broker, writer, uplink and reader")
    assert run.pid not in pids.values()
    return pids


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that is gone (or stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_ctrl_c_stops_every_child_and_exits_0(
    tmp_path: Path, spawn: Callable[..., Proc], server: RecordingServer
) -> None:
    """SIGINT (what Ctrl-C sends; the children run in their own sessions, so only the
    supervisor gets it) to a running pipeline: exit 0, and no child is left running."""
    settings = pipeline_settings(tmp_path, server)
    run = start_run(spawn, settings)
    children = children_up(settings, run, server)
    assert run.stop(signal.SIGINT) == 0, run.output()
    assert pids_running(settings) == [], f"children left after Ctrl-C: {children}"
    assert "pipeline stopped" in run.output()


def test_kill_9_of_powmon_run_stops_readers_then_sinks_then_the_broker(
    tmp_path: Path, spawn: Callable[..., Proc], server: RecordingServer
) -> None:
    """kill -9 of the supervisor: the lifelines close and each child stops on its own, in the
    documented order: the reader first, then the writer and the uplink, the broker last."""
    settings = pipeline_settings(tmp_path, server)
    run = start_run(spawn, settings)
    pids = children_up(settings, run, server)
    os.kill(run.pid, signal.SIGKILL)
    ticks = itertools.count()
    gone_at: dict[str, int] = {}  # role -> the poll at which it was first seen gone

    def all_gone() -> bool:
        tick = next(ticks)
        for role, pid in pids.items():
            if role not in gone_at and not alive(pid):
                gone_at[role] = tick
        return len(gone_at) == len(pids)

    wait_until(all_gone, timeout=30, interval=0.005, what="every child of the killed run gone")
    order = sorted(gone_at, key=gone_at.__getitem__)
    assert gone_at["reader"] < gone_at["writer"] < gone_at["broker"], order
    assert gone_at["reader"] < gone_at["uplink"] < gone_at["broker"], order
    assert pids_running(settings) == []


def try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def held_lock(path: Path, what: str) -> Iterator[str]:
    """Take an instance lock (common/lock.py's format: flock, our pid in the file) once it is
    free; yield what a process refused by it says."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        wait_until(lambda: try_flock(fd), timeout=10, what=f"{path} released")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield f"already running: pid {os.getpid()}, {what} (lock {path})"
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_port(endpoint: str) -> Iterator[str]:
    """Listen on a tcp:// endpoint once it is free; yield what a broker refused says."""
    url = urlsplit(endpoint)
    assert url.hostname is not None and url.port is not None
    address = (url.hostname, url.port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only

        def bound() -> bool:
            try:
                sock.bind(address)
            except OSError:
                return False
            return True

        wait_until(bound, timeout=10, what=f"{endpoint} released")
        sock.listen()
        yield f"bus endpoint {endpoint} is already in use"


def take(role: str, settings: Settings) -> contextlib.AbstractContextManager[str]:
    if role == "broker":
        return held_port(settings.broker_frontend)
    if role == "writer":
        return held_lock(settings.data_root / "writer.lock", f"data in {settings.data_root}")
    spool = settings.uplink.spool_path
    return held_lock(spool.with_name(spool.name + ".lock"), f"spool {spool}")


@pytest.mark.parametrize("role", ["broker", "writer", "uplink"])
def test_a_core_process_refusing_at_a_restart_stops_the_pipeline_with_exit_2(
    tmp_path: Path, spawn: Callable[..., Proc], server: RecordingServer, role: str
) -> None:
    """The pipeline runs; `role` is killed -9 and, before the supervisor restarts it, what it
    must own (its lock, the bus endpoint) is taken by the test: the restarted process exits 2
    at once, and `powmon run` stops everything with exit 2 instead of restarting it again."""
    settings = pipeline_settings(tmp_path, server)
    loaded = load_settings(settings)
    run = start_run(spawn, settings)
    pids = children_up(settings, run, server)
    os.kill(run.pid, signal.SIGSTOP)  # no restart until the test has taken the resource
    try:
        os.kill(pids[role], signal.SIGKILL)
        with take(role, loaded) as refusal:
            os.kill(run.pid, signal.SIGCONT)
            wait_until(lambda: run.popen.poll() is not None, timeout=30,
                       what="powmon run stopping")
    finally:
        if run.popen.poll() is None:  # a failure above: never leave the supervisor stopped
            os.kill(run.pid, signal.SIGCONT)
    out = run.output()
    assert run.popen.returncode == 2, out
    assert pids_running(settings) == [], "children left after the refusal"
    assert refusal in out, out
    assert f"{role} refused to start (exit 2" in out
    assert out.count(f"started {role} pid=") == 2, "started once, restarted once, no more"


def test_a_second_uplink_on_the_same_spool_exits_2_naming_the_holder(
    tmp_path: Path, spawn: Callable[..., Proc], server: RecordingServer
) -> None:
    """With one uplink holding the spool, a second `powmon-uplink` on it exits 2 with one line
    naming the first one's pid and the spool; the first runs on, still holding it."""
    settings = pipeline_settings(tmp_path, server)
    spool = load_settings(settings).uplink.spool_path
    lock = spool.with_name(spool.name + ".lock")
    first = spawn(python_module("powmon.uplink", "--config", str(settings)), "uplink")
    wait_until(lambda: holder(lock) == first.pid, timeout=30, what="the first uplink's lock")
    second = subprocess.run(python_module("powmon.uplink", "--config", str(settings)),
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 2, second.stderr
    assert f"already running: pid {first.pid}, spool {spool}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.popen.poll() is None, "the first uplink runs on"
    assert holder(lock) == first.pid
