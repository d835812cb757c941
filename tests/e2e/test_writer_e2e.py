"""The writer as a real process behind a real broker, fed by a publisher in the test.

The test publishes from an XPUB socket connected to the broker's frontend: XPUB receives the
subscriptions that flow upstream, so the test knows exactly when the writer's `reading/`
subscription has reached it, and every reading sent after that point reaches the writer. That
replaces probe readings (and filtering them out of the CSV) with an exact signal.
"""

from __future__ import annotations

import csv
import io
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
import zmq

from powmon.base.storage import CSV_FIELDS, FileNaming, list_files, open_text
from powmon.common.schema.readings import Flag, Reading, encode_reading
from powmon.common.schema.status import decode_status
from tests.helpers import Proc, python_module, wait_until, write_settings

pytestmark = pytest.mark.e2e

Ctx = zmq.Context[zmq.Socket[bytes]]
T0_NS = 1_795_628_536 * 10**9
SENSORS = [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}]


class Bus:
    """The test's end of the bus: an XPUB publisher and a SUB for the writer's heartbeats."""

    def __init__(self, ctx: Ctx, settings: Path) -> None:
        conf = yaml.safe_load(settings.read_text(encoding="utf-8"))
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, 1_000_000)
        self.pub.connect(conf["BROKER_FRONTEND"])
        self.status = ctx.socket(zmq.SUB)
        self.status.setsockopt(zmq.SUBSCRIBE, b"status/writer/")
        self.status.connect(conf["BROKER_BACKEND"])
        self.counters: dict[str, Any] = {}
        self.sockets = (self.pub, self.status)

    def wait_subscription(self, event: bytes, what: str) -> None:
        """Wait for a subscription event: 0x01+topic subscribes, 0x00+topic unsubscribes."""

        def seen() -> bool:
            while self.pub.poll(50, zmq.POLLIN):
                if self.pub.recv() == event:
                    return True
            return False

        wait_until(seen, timeout=30, what=what)

    def send(self, frames: list[bytes]) -> None:
        self.pub.send_multipart(frames)

    def heartbeat(self) -> dict[str, Any]:
        while self.status.poll(20, zmq.POLLIN):
            self.counters = dict(decode_status(self.status.recv_multipart()).counters)
        return self.counters

    def wait_counters(self, what: str, **expected: int) -> dict[str, Any]:
        def match() -> bool:
            seen = self.heartbeat()
            return all(seen.get(k) == v for k, v in expected.items())

        wait_until(match, timeout=30, what=f"{what}: {expected}, last {self.counters}")
        return self.counters


@pytest.fixture
def start_writer(
    tmp_path: Path,
    zmq_ctx: Ctx,
    spawn: Callable[..., Proc],
    broker: Callable[[Path], Proc],
) -> Iterator[Callable[..., tuple[Proc, Bus, Path]]]:
    """Settings, a broker and a writer; returns the writer, the bus and the data folder."""

    buses: list[Bus] = []

    def start(**overrides: Any) -> tuple[Proc, Bus, Path]:
        settings = write_settings(tmp_path / "settings.yaml", SENSORS, **overrides)
        broker(settings)
        bus = Bus(zmq_ctx, settings)
        buses.append(bus)
        writer = spawn(python_module("powmon.writer", "--config", str(settings)), "writer")
        bus.wait_subscription(b"\x01reading/", "the writer's subscription")
        return writer, bus, tmp_path / "data"

    yield start
    for bus in buses:
        for sock in bus.sockets:
            sock.close(linger=0)


def reading(seq: int, session: str = "e2e", flags: int = 0) -> list[bytes]:
    raw = 1023 if flags else 512
    amps = 37.7 if flags else 0.037
    return encode_reading(Reading("VIC", session, seq, T0_NS + seq * 1000, raw, 0.0024, amps,
                                  amps * 5, flags))


def stored(root: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The data files (closed ones may be compressed: COMPRESS gzip) and their rows."""
    files = [path for _, path in list_files(root, FileNaming.from_data_file("data.csv"))]
    rows: list[dict[str, str]] = []
    for path in files:
        rows += csv.DictReader(io.StringIO(content(path)))
    return files, rows


def content(path: Path) -> str:
    """A data file's text, decompressed."""
    with open_text(path) as f:
        return f.read()


def stop_ok(proc: Proc) -> None:
    code = proc.stop(signal.SIGTERM)
    assert code == 0, proc.log_path.read_text(encoding="utf-8", errors="replace")


def test_every_reading_is_stored_once_in_order_and_sigterm_flushes(
    start_writer: Callable[..., tuple[Proc, Bus, Path]],
) -> None:
    """N readings in, N rows out (after SIGTERM), in order; over-range rows keep their raw."""
    writer, bus, root = start_writer(FLUSH_INTERVAL=1.0)
    n = 3000
    for seq in range(n):
        bus.send(reading(seq, flags=int(Flag.OVER_RANGE) if seq % 100 == 7 else 0))
    bus.wait_counters("all readings received", received=n)
    stop_ok(writer)
    files, rows = stored(root)
    assert len(files) == 1
    assert [int(r["seq"]) for r in rows] == list(range(n))
    assert {r["session"] for r in rows} == {"e2e"}
    over = [r for r in rows if r["flags"] == "over_range"]
    assert len(over) == 30
    assert {r["raw"] for r in over} == {"1023"}
    assert "writer stopped rows=3000" in writer.log_path.read_text(encoding="utf-8")


def test_small_file_size_limit_rotates_into_files_with_headers(
    start_writer: Callable[..., tuple[Proc, Bus, Path]],
) -> None:
    """With FILE_SIZE_LIMIT 1024 rows spread over many files, each with a header, none lost."""
    writer, bus, root = start_writer(FILE_SIZE_LIMIT=1024)
    n = 400
    for seq in range(n):
        bus.send(reading(seq))
    counters = bus.wait_counters("rows stored", rows=n)
    stop_ok(writer)
    files, rows = stored(root)
    assert len(files) > 10
    assert counters["files_opened"] >= len(files) - 1
    header = ",".join(CSV_FIELDS) + "\n"
    for path in files:
        data = content(path)
        assert data.startswith(header)
        assert data.endswith("\n")
        assert len(data.encode()) <= 1024
    assert [int(r["seq"]) for r in rows] == list(range(n))


def test_junk_is_counted_and_gaps_show_in_the_heartbeat(
    start_writer: Callable[..., tuple[Proc, Bus, Path]],
) -> None:
    """Bad msgpack and a wrong schema version are counted; a seq jump is a gap; writer lives."""
    writer, bus, root = start_writer()
    topic = b"reading/VIC/"
    bus.send([topic, b"\xc1 not msgpack"])
    bus.send([topic, msgpack.packb([99, "VIC", "e2e", 0, T0_NS, 512, 0.0, 0.0, 0.0, 0])])
    for seq in [*range(10), *range(20, 30), 15]:
        bus.send(reading(seq))
    counters = bus.wait_counters("junk and gap counted", bad_messages=2, received=21)
    assert (counters["gaps"], counters["missing"], counters["late"]) == (1, 10, 1)
    assert writer.popen.poll() is None
    stop_ok(writer)
    _, rows = stored(root)
    assert [int(r["seq"]) for r in rows] == [*range(10), *range(20, 30), 15]


def test_a_restarted_writer_appends_and_sees_what_it_missed(
    start_writer: Callable[..., tuple[Proc, Bus, Path]],
    spawn: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """After a restart the current file is reused (one header) and the downtime is a gap."""
    writer, bus, root = start_writer()
    for seq in range(5):
        bus.send(reading(seq))
    bus.wait_counters("first rows", rows=5)
    stop_ok(writer)
    bus.wait_subscription(b"\x00reading/", "the old writer's unsubscription")
    again = spawn(python_module("powmon.writer", "--config", str(tmp_path / "settings.yaml")),
                  "writer")
    bus.wait_subscription(b"\x01reading/", "the restarted writer's subscription")
    for seq in range(12, 15):
        bus.send(reading(seq))
    counters = bus.wait_counters("rows after restart", rows=3, gaps=1, missing=7)
    assert counters["files_opened"] == 0
    stop_ok(again)
    files, rows = stored(root)
    assert len(files) == 1
    assert [int(r["seq"]) for r in rows] == [0, 1, 2, 3, 4, 12, 13, 14]
