"""Hostile input never kills a process: junk on the bus, junk on the wire, a disk that says no.

Real processes only: a broker, writer, uplink (to a RecordingServer on 127.0.0.1), `powmon
tap`, readers on sim:// ports, and a writer whose disk fails under it. Every test checks that
the junk was counted where docs/hostile.md says, that valid data still arrived in full, and
that every process is still alive (or stopped cleanly with exit code 0).

The tests run as root, where chmod-based "permission denied" does not stop anything, so the
disk failures use RLIMIT_FSIZE (EFBIG) and /dev/full (ENOSPC) instead.
"""

from __future__ import annotations

import csv
import json
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from powmon.base.storage import FileNaming, list_files, open_text
from powmon.common.schema.readings import Reading, encode_reading
from tests.bus import BusEnd
from tests.helpers import Proc, python_module, unavailable, wait_until, write_settings
from tests.httpserver import RecordingServer

pytestmark = pytest.mark.e2e

Ctx = zmq.Context[zmq.Socket[bytes]]
T0_NS = 1_795_628_536 * 10**9


def reading(sensor: str, session: str, seq: int) -> list[bytes]:
    return encode_reading(Reading(sensor, session, seq, T0_NS + seq, 512, 0.0, 0.0, 0.0))


def csv_rows(root: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for _, path in list_files(root, FileNaming.from_data_file("data.csv")):
        with open_text(path) as f:  # closed files may be compressed (COMPRESS gzip)
            rows += csv.DictReader(f)
    return rows


def stop_ok(*procs: Proc) -> None:
    for proc in procs:
        assert proc.popen.poll() is None, f"{proc.argv} died:\n{proc.output()}"
    for proc in procs:
        assert proc.stop() == 0, proc.output()
        assert "Traceback" not in proc.output()


# ---- 1. junk on the bus ----------------------------------------------------------------------

JUNK: list[list[bytes]] = [
    [b"reading/VIC/"],  # one frame
    [*reading("VIC", "junk", 0), b"third frame"],  # three frames
    [b"reading/VIC/", b"\xc1\xc1 not msgpack \x00\xff"],  # garbage
    [b"reading/VIC/", msgpack.packb([99, "VIC", "junk", 0, T0_NS, 512, 0.0, 0.0, 0.0, 0])],
    [b"reading/ATT/", reading("VIC", "junk", 1)[1]],  # topic / sensor mismatch
    [b"reading/VIC/", msgpack.packb({"sensor_id": "VIC"})],  # a map, not the array
]
STATUS_JUNK: list[list[bytes]] = [
    [b"status/evil/x/", b"\xc1"],
    [b"status/evil/x/", msgpack.packb({"v": 99, "process": "evil", "id": "x"})],
]


def _tap_readings(tap: Proc, session: str) -> list[dict[str, Any]]:
    out = []
    for line in tap.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("session") == session:
                out.append(record)
    return out


def test_junk_on_the_bus_is_counted_and_dropped_by_every_subscriber(
    tmp_path: Path,
    broker: Callable[[Path], Proc],
    spawn: Callable[..., Proc],
    bus_for: Callable[[Path], BusEnd],
) -> None:
    """1 frame, 3 frames, garbage, version 99, topic mismatch: counted; good readings all land."""
    with RecordingServer() as server:
        settings = write_settings(
            tmp_path / "settings.yaml", [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}],
            REMOTE_SAVE=True, UPLINK_URL=server.url, UPLINK_FORMAT="json",
            UPLINK_BATCH_SIZE=50, UPLINK_BATCH_WAIT=0.05, UPLINK_SPOOL="spool.sqlite3",
        )
        broker(settings)
        bus = bus_for(settings)
        config = ["--config", str(settings)]
        writer = spawn(python_module("powmon.writer", *config), "writer")
        uplink = spawn(python_module("powmon.uplink", *config), "uplink")
        # A tap of readings hears the heartbeats too (not shown): the status junk is counted.
        tap = spawn(python_module("powmon", "tap", *config), "tap")
        _probe_until_all_subscribed(bus, tap)
        for frames in JUNK + STATUS_JUNK:
            bus.pub.send_multipart(frames)
        for seq in range(20):
            bus.pub.send_multipart(reading("VIC", "good", seq))
        for proc in ("writer", "uplink"):
            bus.wait(proc, "junk counted", lambda c: c["bad_messages"] == len(JUNK))
        wait_until(lambda: len(_tap_readings(tap, "good")) == 20, 15, what="tap shows 20")
        wait_until(lambda: len(_delivered(server, "good")) == 20, 15, what="uplink sent 20")
        wait_until(lambda: len(_stored(tmp_path, "good")) == 20, 15, what="writer stored 20")
        stop_ok(writer, uplink, tap)
    assert _delivered(server, "good") == list(range(20))
    assert _stored(tmp_path, "good") == list(range(20))
    assert not _stored(tmp_path, "junk")
    assert bus.counters("writer")["bad_messages"] == len(JUNK)  # nothing more came late
    out = tap.output()
    assert "skipped a bad message (1 so far)" in out  # the first is shown at once
    assert f"skipped {len(JUNK) + len(STATUS_JUNK)} bad message(s) in all" in out


def _probe_until_all_subscribed(bus: BusEnd, tap: Proc) -> None:
    """Publish probes until the writer, the uplink and the tap have each seen one.

    Each probe is seq 0 of a session of its own, so probes lost before a subscription took
    effect leave no gap (which the writer and uplink would try to recover).
    """
    sent = 0

    def everyone_saw_one() -> bool:
        nonlocal sent
        bus.pub.send_multipart(reading("VIC", f"probe{sent}", 0))
        sent += 1
        return (
            bus.counters("writer").get("received", 0) > 0
            and bus.counters("uplink").get("received", 0) > 0
            and any(line.startswith('{"timestamp"') for line in tap.output().splitlines())
        )

    wait_until(everyone_saw_one, 30, interval=0.05, what="writer, uplink and tap subscribed")


def _stored(tmp_path: Path, session: str) -> list[int]:
    return [int(r["seq"]) for r in csv_rows(tmp_path / "data") if r["session"] == session]


def _delivered(server: RecordingServer, session: str) -> list[int]:
    return sorted(
        d["seq"]
        for rec in server.delivered()
        for d in json.loads(rec.body)
        if d["session"] == session
    )


# ---- 2. junk on the serial line, and what it does to the log ---------------------------------

SUPPRESSED = re.compile(r"bad answer (\w+).*\((\d+) similar suppressed\)")


def test_non_utf8_and_garbage_from_serial_are_counted_skipped_and_rate_limited(
    tmp_path: Path,
    broker: Callable[[Path], Proc],
    spawn: Callable[..., Proc],
    bus_for: Callable[[Path], BusEnd],
) -> None:
    """Every 2nd answer not UTF-8, every 3rd garbage: bad_lines rises, readings go on, and
    the log holds a handful of warnings, then one that counts the lines it held back."""
    port = "sim://HOSTILE1?nonutf8_every=2&garbage_every=3&seed=5"
    # Request/answer: these faults spoil answers to `read` (a stream's are frame faults).
    settings = write_settings(tmp_path / "settings.yaml", [{"PORT": port, "SENSORS_ID": "H1"}],
                              LOG_LEVEL=0, STREAM="off")
    broker(settings)
    bus = bus_for(settings)
    reader = spawn(python_module("powmon.readers", "--sensor-id", "H1", "--config",
                                 str(settings)), "reader")
    bus.wait("reader", "bad lines and readings", lambda c: c["bad_lines"] > 100
             and c["readings"] > 100)
    # The reader logs each kind of bad answer at most once per 10 s: wait for the second one.
    match = wait_until(lambda: SUPPRESSED.search(reader.output()), 30, interval=0.2,
                       what="a warning that reports the suppressed count")
    assert match is not None
    counters = bus.counters("reader")
    stop_ok(reader)
    warnings = [line for line in reader.output().splitlines() if " WARNING " in line]
    kinds = {m.group(1) for m in re.finditer(r"bad answer (\w+)", reader.output())}
    assert "non_utf8" in kinds
    assert len(warnings) <= 2 * len(kinds) + 1, warnings  # one per kind per 10 s, plus slack
    assert int(match.group(2)) >= 100
    assert counters["bad_lines"] > 10 * len(warnings)
    assert counters["readings"] > 100
    assert counters["reconnects"] == 0  # bad lines are skipped, not a reason to reconnect


# ---- 3. a disk that refuses writes -----------------------------------------------------------

# Run a module with a file size limit set in the child itself, before it starts. (preexec_fn
# would do the same from the parent, but it is unsafe in a process with threads, and the test
# process has ZeroMQ's.) SIGXFSZ is ignored so that write() fails with EFBIG instead of the
# signal killing the process: that is the failure a full quota or a size limit looks like.
LIMITED = """\
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""
FSIZE = 64 * 1024


def _wait_writer_subscribed(bus: BusEnd) -> None:
    """Probes (each seq 0 of its own session, so no gaps) until the writer received one."""
    sent = 0

    def received() -> bool:
        nonlocal sent
        bus.pub.send_multipart(reading("VIC", f"probe{sent}", 0))
        sent += 1
        return int(bus.counters("writer").get("received", 0)) > 0

    wait_until(received, 30, interval=0.05, what="the writer's subscription")


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="prlimit(2) is Linux-only")
def test_writer_over_its_file_size_limit_keeps_rows_and_stores_all_once_lifted(
    tmp_path: Path,
    broker: Callable[[Path], Proc],
    spawn: Callable[..., Proc],
    bus_for: Callable[[Path], BusEnd],
) -> None:
    """EFBIG mid-write: the file is cut back to whole rows, rows wait in memory, errors are
    logged; once the limit is lifted every reading is stored exactly once, in order."""
    settings = write_settings(tmp_path / "settings.yaml", [{"PORT": "sim://VIC",
                              "SENSORS_ID": "VIC"}], LOG_LEVEL=0)
    broker(settings)
    bus = bus_for(settings)
    writer = spawn([sys.executable, "-c", LIMITED, str(FSIZE), "powmon.writer", "--config",
                    str(settings)], "writer")
    _wait_writer_subscribed(bus)
    for seq in range(2000):  # about 150 KB of rows: more than twice the limit
        bus.pub.send_multipart(reading("VIC", "big", seq))
    bus.wait("writer", "refused writes", lambda c: c["write_errors"] >= 2 and c["pending"] > 0)
    [path] = sorted((tmp_path / "data").glob("data-*.csv"))
    assert path.stat().st_size <= FSIZE
    assert path.read_bytes().endswith(b"\n")  # never half a row
    resource.prlimit(writer.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    wait_until(lambda: _stored(tmp_path, "big") == list(range(2000)), 30,
               what="every reading stored once the limit is gone")
    bus.wait("writer", "nothing pending", lambda c: c["pending"] == 0 and c["dropped"] == 0)
    stop_ok(writer)
    log = writer.output()
    assert "cannot write to" in log
    assert "File too large" in log
    assert "writing again after" in log


def _need_mount_namespaces() -> None:
    """Skip without mount namespaces (Linux, root); fail instead where POWMON_REQUIRE names
    `mounts` (.ci/run: CI runs as root)."""
    if sys.platform != "linux" or not (shutil.which("unshare") and shutil.which("nsenter")):
        unavailable("mounts", "needs Linux, unshare(1) and nsenter(1)")
    done = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        unavailable("mounts", f"cannot make a mount namespace: {done.stderr.strip()}")


def test_writer_on_a_full_disk_keeps_rows_and_stores_all_once_there_is_room(
    tmp_path: Path,
    broker: Callable[[Path], Proc],
    spawn: Callable[..., Proc],
    bus_for: Callable[[Path], BusEnd],
) -> None:
    """ENOSPC: the data file is /dev/full (bind-mounted, in the writer's own mount namespace
    only); rows wait in memory, errors are logged; unmounted, everything is stored once."""
    _need_mount_namespaces()
    settings = write_settings(tmp_path / "settings.yaml", [{"PORT": "sim://VIC",
                              "SENSORS_ID": "VIC"}], LOG_LEVEL=0)
    data = tmp_path / "data"
    data.mkdir()
    current = data / "data-000001-20260101T000000Z.csv"
    current.write_text("timestamp,sensor_id,session,seq,raw,volts,amps,watts,flags\n")
    broker(settings)
    bus = bus_for(settings)
    # A private mount namespace: the bind mount exists for the writer alone and vanishes
    # with it, whatever happens to the test.
    writer = spawn(["unshare", "--mount", "--propagation", "private", *python_module(
        "powmon.writer", "--config", str(settings))], "writer")
    bus.wait("writer", "up (its start-up read of the data files is done)", lambda c: True)
    nsenter = ["nsenter", "--target", str(writer.pid), "--mount"]
    subprocess.run([*nsenter, "mount", "--bind", "/dev/full", str(current)], check=True)
    _wait_writer_subscribed(bus)  # the data file is opened at the first flush: /dev/full
    for seq in range(300):
        bus.pub.send_multipart(reading("VIC", "full", seq))
    bus.wait("writer", "refused writes", lambda c: c["write_errors"] >= 2 and c["pending"] >= 300)
    subprocess.run([*nsenter, "umount", str(current)], check=True)
    wait_until(lambda: _stored(tmp_path, "full") == list(range(300)), 30,
               what="every reading stored once the disk has room")
    bus.wait("writer", "nothing pending", lambda c: c["pending"] == 0 and c["dropped"] == 0)
    stop_ok(writer)
    assert sorted(data.glob("data-*.csv")) == [current]  # appended to, under its one header
    assert current.read_text().count("timestamp,") == 1
    log = writer.output()
    assert "No space left on device" in log
    assert "writing again after" in log
