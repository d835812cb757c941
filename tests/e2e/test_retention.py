"""Retention on a real writer (issue 21, item 1): DATA_MAX_BYTES, DATA_KEEP_DAYS, a full disk.

The writer runs behind a real broker and is fed by the test's XPUB publisher (test_writer_e2e's
Bus), so every reading sent after its subscription arrived reaches it. Each round sends
readings, then waits until the writer's heartbeat says all of them are on disk: then the
writer is idle and the folder can be measured as it stands.
"""

from __future__ import annotations

import gzip
import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from powmon.base.storage import FileNaming, header_line, list_files, open_text
from powmon.base.text import format_ts
from tests.e2e.test_losses import _need_tmpfs_mounts
from tests.e2e.test_writer_e2e import SENSORS, Bus, reading, stop_ok
from tests.helpers import Proc, python_module, write_settings
from tests.pipeline import powmon_status

pytestmark = pytest.mark.e2e

Ctx = zmq.Context[zmq.Socket[bytes]]
NAMING = FileNaming.from_data_file("data.csv")
LIMIT = 4096
DELETED = re.compile(
    r"retention: deleted (?P<name>\S+) \((?P<first>\S+) to (?P<last>\S+), (?P<rows>\d+) rows, "
    r"(?P<bytes>\d+) bytes\): (?P<why>[^\n]+)")
DAY_NS = 86_400 * 10**9


def deletions(log: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in DELETED.finditer(log)]


def folder(data: Path) -> dict[str, list[list[str]]]:
    """Each data file's rows (as field lists, header left out), by name, oldest first."""
    out = {}
    for _, path in list_files(data, NAMING):
        with open_text(path) as f:
            out[path.name] = [line.rstrip("\n").split(",") for line in f][1:]
    return out


def total_size(data: Path) -> int:
    return sum(path.stat().st_size for _, path in list_files(data, NAMING))


def send(bus: Bus, start: int, count: int) -> int:
    for seq in range(start, start + count):
        bus.send(reading(seq))
    return start + count


def all_written(bus: Bus, sent: int) -> dict[str, Any]:
    return bus.wait_counters(f"all {sent} readings written", rows=sent, pending=0)


Start = Callable[..., tuple[Proc, Bus, Path]]


@pytest.fixture
def start(tmp_path: Path, zmq_ctx: Ctx, spawn: Callable[..., Proc],
          broker: Callable[[Path], Proc]) -> Iterator[Start]:
    """Settings (4 KiB files and `overrides`), a broker and a writer (its argv passed through
    `argv`); returns the writer, the bus and the settings."""
    buses: list[Bus] = []

    def run(argv: Callable[[list[str]], list[str]] = list,
            **overrides: Any) -> tuple[Proc, Bus, Path]:
        # COMPRESS none unless a test says otherwise: the cap counts sizes on disk, and these
        # tests count files of a known size (a compressed file's size is the compressor's).
        overrides = {"COMPRESS": "none", **overrides}
        settings = write_settings(tmp_path / "settings.yaml", SENSORS, FILE_SIZE_LIMIT=LIMIT,
                                  **overrides)
        broker(settings)
        buses.append(Bus(zmq_ctx, settings))
        writer = spawn(argv(python_module("powmon.writer", "--config", str(settings))),
                       "writer")
        buses[-1].wait_subscription(b"\x01reading/", "the writer's subscription")
        return writer, buses[-1], settings

    yield run
    for bus in buses:
        for sock in bus.sockets:
            sock.close(linger=0)


def test_data_max_bytes_keeps_the_newest_files_under_the_cap_plus_one_file(
    tmp_path: Path, start: Start,
) -> None:
    """Readings keep coming at 4 KiB files and a 16 KiB cap: after every round the data
    files total at most the cap plus one file, the file being written is there, and at the end
    the files left hold the newest readings, unbroken; every deletion is logged (file, time
    range, rows) and counted in the heartbeat."""
    cap = 4 * LIMIT
    writer, bus, _ = start(DATA_MAX_BYTES=cap)
    data = tmp_path / "data"
    sent = 0
    for _ in range(12):
        sent = send(bus, sent, 70)  # about 1.5 files a round
        beat = all_written(bus, sent)
        assert total_size(data) <= cap + LIMIT, sorted(p.name for p in data.iterdir())
        assert (data / beat["current_file"]).is_file(), "the open file was deleted"
    beat = all_written(bus, sent)
    stop_ok(writer)
    log = writer.output()
    gone = deletions(log)
    files = folder(data)
    assert gone and beat["files_deleted"] == len(gone) >= 5
    assert beat["bytes_deleted"] == sum(int(d["bytes"]) for d in gone)
    assert all(d["why"].startswith(f"DATA_MAX_BYTES {cap} ") for d in gone)
    counters = [NAMING.counter_of(d["name"]) for d in gone]
    assert counters == list(range(1, len(gone) + 1)), "oldest first"
    kept = [NAMING.counter_of(name) for name in files]
    assert kept == list(range(len(gone) + 1, len(gone) + 1 + len(files)))
    assert beat["current_file"] == list(files)[-1]
    seqs = [int(row[3]) for rows in files.values() for row in rows]
    assert seqs == list(range(sent - len(seqs), sent)), "the newest readings, each once"
    assert sum(int(d["rows"]) for d in gone) + len(seqs) == sent
    stamps = [(d["first"], d["last"]) for d in gone]
    assert all(a <= b for a, b in stamps) and stamps == sorted(stamps)
    oldest = next(iter(files.values()))[0][0]
    assert stamps[-1][1] < oldest == beat["oldest_data"]


def _old_file(data: Path, counter: int, stamps: list[int], *, packed: bool = False) -> Path:
    """A closed data file of one row per timestamp, as the writer would have written it."""
    rows = "".join(f"{format_ts(ts)},VIC,old{counter},{i},512,0.00240,0.0370,0.185,\n"
                   for i, ts in enumerate(stamps))
    path = data / NAMING.name(counter, stamps[0] / 1e9)
    text = (header_line() + rows).encode()
    if packed:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text))
    else:
        path.write_bytes(text)
    return path


def test_data_keep_days_deletes_closed_files_by_the_age_of_their_newest_row(
    tmp_path: Path, start: Start,
) -> None:
    """Closed files of old rows (one gzipped) before the writer starts, DATA_KEEP_DAYS 10: the
    two whose newest row is older go at start, oldest first; one whose first rows are 30 days
    old but whose newest is 5 days old stays, and so does the newest file. `powmon status`
    shows the deletions and the oldest data kept."""
    data = tmp_path / "data"
    data.mkdir()
    now = time.time_ns()
    first = _old_file(data, 1, [now - 40 * DAY_NS, now - 39 * DAY_NS], packed=True)
    second = _old_file(data, 2, [now - 31 * DAY_NS + i for i in range(3)])
    _old_file(data, 3, [now - 30 * DAY_NS, now - 20 * DAY_NS, now - 5 * DAY_NS])
    _old_file(data, 4, [now - DAY_NS])
    sizes = first.stat().st_size + second.stat().st_size
    writer, bus, settings = start(DATA_KEEP_DAYS=10,
                                  HEARTBEAT_INTERVAL=0.5)
    beat = bus.wait_counters("the old files deleted", files_deleted=2, bytes_deleted=sizes)
    assert beat["oldest_data"] == format_ts(now - 30 * DAY_NS)
    sent = send(bus, 0, 5)
    all_written(bus, sent)
    status = powmon_status(settings, "--json")
    table = powmon_status(settings)
    stop_ok(writer)
    gone = deletions(writer.output())
    assert [(d["name"], d["first"], d["last"], d["rows"]) for d in gone] == [
        (first.name, format_ts(now - 40 * DAY_NS), format_ts(now - 39 * DAY_NS), "2"),
        (second.name, format_ts(now - 31 * DAY_NS), format_ts(now - 31 * DAY_NS + 2), "3"),
    ]
    assert all(d["why"] == "DATA_KEEP_DAYS 10" for d in gone)
    files = folder(data)
    assert [NAMING.counter_of(name) for name in files] == [3, 4]
    assert len(files[list(files)[-1]]) == 1 + sent, "the writer kept appending to the newest"
    report = json.loads(status.stdout)
    assert report["storage"] == {"files_deleted": 2, "bytes_deleted": sizes,
                                 "oldest_data": format_ts(now - 30 * DAY_NS)}, status.stdout
    assert (f"storage: oldest data {format_ts(now - 30 * DAY_NS)}, deleted 2 files "
            f"({sizes} bytes) since writer start") in table.stdout, table.stdout


def test_on_a_full_disk_retention_deletes_the_oldest_closed_file_instead_of_dropping(
    tmp_path: Path, start: Start,
) -> None:
    """The data folder on a 96 KiB tmpfs (the writer's own mount namespace), a cap far above
    it: the disk fills, and the writer deletes its oldest closed files to keep writing. Every
    reading sent is written, none dropped; what is left (copied out at exit) is the newest
    readings, unbroken."""
    _need_tmpfs_mounts()
    data, out = tmp_path / "data", tmp_path / "copied"
    data.mkdir()

    def in_tmpfs(argv: list[str]) -> list[str]:
        """The writer under a shell that mounts the tmpfs, passes a SIGTERM on (a stop, or the
        teardown's: never a writer left behind) and copies the folder out after it exited."""
        script = (f"mount -t tmpfs -o size=96k tmpfs {data} || exit 1; {' '.join(argv)} & "
                  "pid=$!; trap 'kill -TERM $pid' TERM; wait $pid; code=$?; "
                  "if [ $code -gt 128 ]; then wait $pid; code=$?; fi; "
                  f"mkdir -p {out}; cp -a {data}/. {out}/; exit $code")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]

    writer, bus, _ = start(in_tmpfs,
                           DATA_MAX_BYTES=1 << 30, SYNC_WRITE=False)
    sent = 0
    while "disk full" not in writer.output() or sent < 3000:
        assert sent < 20_000, "the disk never filled"
        sent = send(bus, sent, 200)
        beat = all_written(bus, sent)
        assert beat["dropped"] == 0
    assert writer.stop(signal.SIGTERM) == 0, writer.output()
    gone = deletions(writer.output())
    assert gone and all(d["why"] == "disk full" for d in gone)
    assert beat["files_deleted"] == len(gone) and beat["write_errors"] >= 1
    assert [NAMING.counter_of(d["name"]) for d in gone] == list(range(1, len(gone) + 1))
    files = folder(out)
    assert [NAMING.counter_of(n) for n in files] == list(range(len(gone) + 1,
                                                              len(gone) + 1 + len(files)))
    seqs = [int(row[3]) for rows in files.values() for row in rows]
    assert seqs == list(range(sent - len(seqs), sent)), "the newest readings, each once"
    assert sum(int(d["rows"]) for d in gone) + len(seqs) == sent
    assert not (out / "gaps.csv").exists() or "buffer_full" not in (
        out / "gaps.csv").read_text(encoding="utf-8")

