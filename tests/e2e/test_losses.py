"""Complete or accounted for: what the Guarantees promise, each on real processes (issue #9).

- A writer that falls behind the high-water mark (SIGSTOPped while readers run flat out)
  recovers every reading through replay.
- A reader killed with -9 while the writer was behind: what the writer can no longer have is
  named in gaps.csv as `reader_restarted`; everything else is stored once.
- The writer killed with -9 while its 1 s buffer holds rows, its last row torn: after the
  restart no row is lost or doubled, and no torn line is left in the file.
- The uplink's spool on a full disk: it stops with a clear error and keeps every reading it
  had committed.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from powmon.base.storage import CSV_FIELDS
from powmon.common.schema.readings import Reading, encode_reading
from powmon.common.schema.status import decode_status
from powmon.common.settings import load_settings
from tests.bus import BusEnd
from tests.helpers import (
    Key,
    Proc,
    data_keys,
    data_rows,
    data_streams,
    lost_rows,
    pids_running,
    published,
    published_by,
    python_module,
    unavailable,
    wait_until,
    write_settings,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc"),
]

FAST = [{"PORT": f"sim://H{i}?amps=1", "SENSORS_ID": f"H{i}"} for i in range(2)]
QUICK = 0.001  # 1,000 readings/s per sensor: a rate the writer keeps up with, loaded or not


def behind_settings(tmp_path: Path, **overrides: object) -> Path:
    """HWM 1000 and the broker's backend on a Unix socket, whose kernel buffers are small:
    a writer frozen for a few seconds falls behind the high-water mark and the broker drops
    for it (on loopback TCP the kernel would buffer tens of megabytes first). Request/answer:
    one message per reading (PUBLISH_INTERVAL 0); batches would take minutes to fill the
    pipes."""
    return write_settings(tmp_path / "settings.yaml", FAST, POLLING_DELAY=QUICK, HWM=1000,
                          BROKER_BACKEND=f"ipc://{tmp_path}/backend.sock", STREAM="off",
                          PUBLISH_INTERVAL=0, **overrides)


HWM = 1000  # behind_settings'


class Watch:
    """A subscriber of its own on the broker's backend: counts the reading messages going by
    (and the smallest one) and keeps each reader's latest session."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], settings: Path) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        for topic in (b"reading/", b"status/reader/"):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(load_settings(settings).broker_backend)
        self.messages = 0
        self.smallest = 1 << 30
        self.sessions: dict[str, str] = {}

    def pump(self) -> int:
        """Take what has arrived; return the count of reading messages so far."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return self.messages
            if frames[0].startswith(b"reading/"):
                self.messages += 1
                self.smallest = min(self.smallest, sum(map(len, frames)))
                continue
            status = decode_status(frames)
            if status.reader is not None:
                self.sessions[status.ident] = status.reader.session

    def session(self, sensor: str) -> str | None:
        """The session of the sensor's latest reader heartbeat so far."""
        self.pump()
        return self.sessions.get(sensor)

    def wait_past_capacity(self) -> None:
        """Wait until the broker must have dropped for a subscriber that stopped reading
        now: once more reading messages went by than the way to it holds, ZeroMQ's queues
        (HWM, counted for both ends) and the kernel's (an AF_UNIX socket's send buffer,
        wmem_default, counted twice), at the smallest message seen, with a margin for
        messages already in flight. What it counts is a part of what goes to that subscriber
        (readings, not heartbeats), so the wait errs long."""
        wmem = int(Path("/proc/sys/net/core/wmem_default").read_text(encoding="ascii"))
        since = self.pump()
        wait_until(lambda: self.pump() - since > 2 * HWM + 2 * wmem // self.smallest + 500,
                   timeout=90, what="more readings than the frozen writer's queues hold")


def sensor_of(pid: int) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return args[args.index("--sensor-id") + 1]


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The fault: a subscriber that does not read (SIGSTOP) until the block ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
def watching(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Callable[[Path, Path], Watch]]:
    """Once both readers' rows are stored: a Watch that has seen reading messages."""
    made: list[Watch] = []

    def start(settings: Path, data: Path) -> Watch:
        wait_until(lambda: len({k[:2] for k in data_keys(data)}) == 2, timeout=30,
                   what="rows of both")
        made.append(Watch(zmq_ctx, settings))
        wait_until(made[-1].pump, what="reading messages on the backend")
        return made[-1]

    yield start
    for watch in made:
        watch.sock.close(linger=0)


def lost_keys(data: Path) -> set[Key]:
    return {(g["sensor_id"], g["session"], seq) for g in lost_rows(data)
            for seq in range(int(g["first_seq"]), int(g["last_seq"]) + 1)}


def accounted(data: Path, known: dict[tuple[str, str], int]) -> bool:
    """Every seq below `known[stream]` is stored exactly once or named as lost, never both."""
    stored = Counter(data_keys(data))
    gone = lost_keys(data)
    return all(
        all((stored[(s, sess, q)] == 1) != ((s, sess, q) in gone) for q in range(top))
        for (s, sess), top in known.items()
    )


def test_a_writer_behind_the_high_water_mark_recovers_everything_by_replay(
    tmp_path: Path, spawn: Callable[..., Proc], watching: Callable[[Path, Path], Watch]
) -> None:
    """Readers at 1 kHz, HWM 1000, writer frozen until the broker must have dropped for it:
    the writer sees the holes and replays them; the CSV ends complete and gaps.csv empty."""
    settings = behind_settings(tmp_path)
    data = tmp_path / "data"
    run = spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], "run")
    watch = watching(settings, data)
    [writer] = pids_running(settings, "powmon.writer")
    with frozen(writer):
        watch.wait_past_capacity()
    wait_until(lambda: any("replayed" in r["flags"] for r in data_rows(data)), timeout=30,
               what="holes filled by replay")
    wait_until(lambda: accounted(data, {k: max(v) for k, v in data_streams(data).items()}),
               timeout=30, what="the writer caught up")
    assert run.stop(signal.SIGTERM) == 0
    taken = published_by(run, 2)
    found = {k[:2] for k in data_keys(data)}
    assert len(found) == 2
    assert accounted(data, {s: taken[s[0]] for s in found})
    assert lost_rows(data) == [], "the replay buffers held everything the broker dropped"
    assert max(Counter(data_keys(data)).values()) == 1


def test_a_reader_killed_while_the_writer_was_behind_is_named_as_reader_restarted(
    tmp_path: Path, spawn: Callable[..., Proc], watching: Callable[[Path, Path], Watch]
) -> None:
    """While the writer is frozen, one reader is killed -9 (its replay buffer dies with it):
    what the writer missed of that session is in gaps.csv as reader_restarted."""
    settings = behind_settings(tmp_path, RESTART_BACKOFF_MAX=1.0)
    data = tmp_path / "data"
    run = spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], "run")
    watch = watching(settings, data)
    [writer] = pids_running(settings, "powmon.writer")
    victim = sorted(pids_running(settings, "powmon.readers"))[0]
    sensor = sensor_of(victim)
    with frozen(writer):
        watch.wait_past_capacity()  # the writer is behind the high-water mark
        old = wait_until(lambda: watch.session(sensor), what="the victim's heartbeat")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: watch.session(sensor) != old, timeout=30,
                   what="the supervisor's new reader heard on the bus (the writer still frozen)")
    wait_until(lambda: any(g["reason"] == "reader_restarted" for g in lost_rows(data)), timeout=30,
               what="the killed reader's missed readings named in gaps.csv")
    assert run.stop(signal.SIGTERM) == 0
    gaps = lost_rows(data)
    assert {g["reason"] for g in gaps} == {"reader_restarted"}
    [session] = {g["session"] for g in gaps}
    stored = [k for k in data_keys(data) if k[1] == session]
    top = max(int(g["last_seq"]) for g in gaps) + 1
    top = max(top, max(seq for _, _, seq in stored) + 1)
    assert accounted(data, {(stored[0][0], session): top})
    assert max(Counter(data_keys(data)).values()) == 1


def test_the_writer_killed_with_a_full_buffer_and_a_torn_row_loses_and_doubles_nothing(
    tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
    bus_for: Callable[[Path], BusEnd],
) -> None:
    """FLUSH_INTERVAL 1 s: kill -9 of the writer drops what it buffered; a torn last row is
    left behind. The restarted writer cuts the torn row and replays the rest: every reading
    stored once, every line of the file a whole row."""
    settings = write_settings(tmp_path / "settings.yaml", FAST[:1], POLLING_DELAY=0.01,
                              FLUSH_INTERVAL=1.0)
    data = tmp_path / "data"
    broker(settings)
    bus = bus_for(settings)
    writer_argv = python_module("powmon.writer", "--config", str(settings))
    writer = spawn(writer_argv, "writer")
    reader = spawn(python_module("powmon.readers", "--config", str(settings), "--sensor-id",
                                 "H0"), "reader")
    wait_until(lambda: len(data_keys(data)) >= 50, timeout=30, what="first flushed rows")
    bus.wait("writer", "rows flushed, and rows buffered since",
             lambda c: c["flushes"] >= 1 and c["pending"] >= 20)
    writer.popen.send_signal(signal.SIGKILL)
    writer.popen.wait(10)
    [path] = sorted(data.glob("data-*.csv"))
    last = path.read_text(encoding="utf-8").splitlines()[-1].split(",")
    torn = ",".join([*last[:3], str(int(last[3]) + 1), last[4]])  # the next row, cut short
    with path.open("a", encoding="utf-8") as f:
        f.write(torn)
    writer2 = spawn(writer_argv, "writer2")
    wait_until(lambda: "cut a torn last row" in writer2.output(), timeout=30, what="the cut")
    wait_until(lambda: len(data_keys(data)) >= 400, timeout=30, what="rows after the restart")
    assert reader.stop(signal.SIGTERM) == 0
    taken = published(reader.output())["H0"]
    [session] = {s for _, s, _ in data_keys(data)}
    wait_until(lambda: accounted(data, {("H0", session): taken}), timeout=30,
               what="every reading stored once or named")
    assert lost_rows(data) == []
    assert writer2.stop(signal.SIGTERM) == 0
    with path.open(newline="", encoding="utf-8") as f:
        assert all(len(row) == len(CSV_FIELDS) for row in csv.reader(f)), "a torn line remains"


def _need_tmpfs_mounts() -> None:
    """Skip without mount namespaces (Linux, root); fail instead where POWMON_REQUIRE names
    `mounts` (.ci/run: CI runs as root)."""
    if sys.platform != "linux" or not shutil.which("unshare"):
        unavailable("mounts", "needs Linux and unshare(1)")
    probe = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             "mount -t tmpfs -o size=64k tmpfs /mnt"]
    done = subprocess.run(probe, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        unavailable("mounts", f"cannot mount a tmpfs in a mount namespace: {done.stderr.strip()}")


def test_the_uplink_on_a_full_disk_stops_with_a_clear_error_and_keeps_what_it_committed(
    tmp_path: Path, broker: Callable[[Path], Proc], spawn: Callable[..., Proc],
    bus_for: Callable[[Path], BusEnd],
) -> None:
    """The spool on a 1 MB tmpfs (the uplink's own mount namespace), the server refusing:
    readings pile up until the disk is full; the uplink exits 1 saying so, and its spool (copied
    out as it was) holds an unbroken run of the readings, each once.

    The disk is several transactions deep: the uplink commits what gathered in up to 0.1 s
    (at most DRAIN_MAX messages) at once, and a transaction that does not fit fails whole, so
    a disk smaller than one batch would fill before the first commit after seq 0."""
    _need_tmpfs_mounts()
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    out = tmp_path / "copied"
    settings = write_settings(
        tmp_path / "settings.yaml", FAST[:1], REMOTE_SAVE=True,
        UPLINK_URL="http://127.0.0.1:9/ingest", UPLINK_SPOOL=str(spool_dir / "spool.sqlite3"),
        UPLINK_BACKOFF_MAX=5,
    )
    broker(settings)
    bus = bus_for(settings)
    script = (f"mount -t tmpfs -o size=1m tmpfs {spool_dir} && "
              f"{' '.join(python_module('powmon.uplink', '--config', str(settings)))}; "
              f"code=$?; mkdir -p {out}; cp -a {spool_dir}/. {out}/; exit $code")
    uplink = spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                   "uplink")
    bus.wait("uplink", "up", lambda c: True)
    seq = 0
    while uplink.popen.poll() is None and seq < 200_000:
        for _ in range(50):
            bus.pub.send_multipart(encode_reading(Reading("H0", "full", seq, seq, 512, 0.0,
                                                          0.0, 0.0)))
            seq += 1
        time.sleep(0.01)  # pace the publisher: a PUB past its HWM would drop on our side
    assert uplink.stop(signal.SIGTERM) == 1
    log = uplink.output()
    assert "database or disk is full" in log and str(spool_dir / "spool.sqlite3") in log
    db = sqlite3.connect(out / "spool.sqlite3")
    try:
        seqs = [row[0] for row in db.execute("SELECT seq FROM readings ORDER BY seq")]
        (last,) = db.execute("SELECT last_seq FROM progress WHERE session='full'").fetchone()
    finally:
        db.close()
    assert len(seqs) > 100, "the disk filled before anything was spooled"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "holes or doubles in the spool"
    assert last == seqs[-1], "the progress table agrees with the readings committed"
