"""The writer's loop state: bad messages, gap counters, and surviving a disk that says no."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import resource
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from powmon.base.storage import CSV_FIELDS
from powmon.base.text import format_ts
from powmon.common.schema.readings import Reading, encode_reading
from powmon.writer.writer import WriterConfig
from tests.writers import Writer, make_writer

T0_NS = 1_795_628_536 * 10**9


class Clock:
    """A clock the test moves by hand, so retry timing is asserted without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(root: Path, **overrides: Any) -> WriterConfig:
    base = WriterConfig(
        data_root=root, data_file="data.csv", file_size_limit=10_000_000, flush_interval=0.1,
        sync_write=False, backend="tcp://127.0.0.1:1", frontend="tcp://127.0.0.1:2", hwm=1000,
        heartbeat_interval=1.0,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    made: list[Writer] = []
    yield made
    for w in made:
        w.csv.files.close()


def make(writers: list[Writer], root: Path, clock: Clock, **overrides: Any) -> Writer:
    writers.append(make_writer(config(root, **overrides), clock=clock))
    return writers[-1]


def msg(seq: int, sensor: str = "VIC", session: str = "s1") -> list[bytes]:
    return encode_reading(Reading(sensor, session, seq, T0_NS + seq, 512, 0.0024, 0.037, 0.185))


def stored(root: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(root.glob("data-*.csv")):
        rows += csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    return rows


def test_rows_are_written_as_received_with_utc_timestamps(
    tmp_path: Path, writers: list[Writer], clock: Clock
) -> None:
    """Each reading becomes one CSV row with the schema's columns, timestamp in UTC ISO 8601."""
    w = make(writers, tmp_path, clock)
    w.core.handle([msg(0), msg(1, sensor='a,b "c"')])
    assert w.csv.flush(clock.now)
    rows = stored(tmp_path)
    assert list(rows[0]) == list(CSV_FIELDS)
    assert rows[0]["timestamp"] == format_ts(T0_NS) == "2026-11-25T17:42:16.000000Z"
    assert rows[1]["sensor_id"] == 'a,b "c"'
    assert (rows[0]["volts"], rows[0]["amps"], rows[0]["watts"]) == ("0.00240", "0.0370", "0.185")
    assert w.core.counters()["rows"] == 2
    assert w.core.counters()["flushes"] == 1


def test_bad_messages_are_counted_and_dropped(
    tmp_path: Path, writers: list[Writer], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Junk, an unknown schema version and a wrong topic never crash; good rows still go in."""
    w = make(writers, tmp_path, clock)
    topic, payload = msg(1)
    v2 = msgpack.packb([2, "VIC", "s1", 2, T0_NS, 512, 0.0, 0.0, 0.0, 0])
    with caplog.at_level(logging.WARNING):
        w.core.handle([msg(0), [topic, b"\xc1junk"], [topic, v2], [b"reading/ATT/", payload],
                  [topic], msg(1)])
    w.csv.flush(clock.now)
    assert w.core.counters()["bad_messages"] == 4
    assert [r["seq"] for r in stored(tmp_path)] == ["0", "1"]
    assert sum("bad message" in r.message for r in caplog.records) == 1  # rate-limited


def test_gaps_and_late_readings_are_counted_and_still_stored(
    tmp_path: Path, writers: list[Writer], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A jump forward is a gap (logged once at WARNING); a late reading is stored anyway."""
    w = make(writers, tmp_path, clock)
    with caplog.at_level(logging.WARNING):
        w.core.handle([msg(s) for s in (0, 1, 2, 7, 8, 4)])
    w.csv.flush(clock.now)
    counters = w.core.counters()
    assert (counters["gaps"], counters["missing"], counters["late"]) == (1, 4, 1)
    assert [r["seq"] for r in stored(tmp_path)] == ["0", "1", "2", "7", "8", "4"]
    assert any("gap sensor=VIC session=s1 missing=4 seq=3..6" in r.message for r in caplog.records)


def test_a_failing_disk_keeps_rows_and_retries_with_backoff(
    tmp_path: Path, writers: list[Writer], clock: Clock
) -> None:
    """When data_root cannot be created the rows wait; once it can, all are stored once."""
    root = tmp_path / "data"
    root.write_text("in the way")  # a file where the directory should be
    w = make(writers, root, clock)
    w.core.handle([msg(0), msg(1)])
    clock.now += 1
    w.csv.tick(clock.now)
    assert w.core.counters()["write_errors"] == 1
    assert w.core.counters()["pending"] == 2
    w.core.handle([msg(2)])
    clock.now += 0.2  # within the first backoff delay (0.5 s): no new attempt
    w.csv.tick(clock.now)
    assert w.core.counters()["write_errors"] == 1
    root.unlink()
    clock.now += 1
    w.csv.tick(clock.now)
    assert w.core.counters()["pending"] == 0
    assert [r["seq"] for r in stored(root)] == ["0", "1", "2"]
    assert w.core.counters()["rows"] == 3


def test_rows_past_the_memory_bound_are_counted_as_dropped(
    tmp_path: Path, writers: list[Writer], clock: Clock
) -> None:
    """While the disk refuses writes, memory is bounded: the excess is dropped and counted."""
    root = tmp_path / "data"
    root.write_text("in the way")
    w = make(writers, root, clock, max_pending_rows=5)
    w.core.handle([msg(s) for s in range(8)])
    assert w.core.counters()["dropped"] == 3
    assert w.core.counters()["pending"] == 5
    root.unlink()
    assert w.csv.flush(clock.now)
    assert [r["seq"] for r in stored(root)] == ["0", "1", "2", "3", "4"]


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_write_cut_short_leaves_no_partial_row_and_no_duplicate(
    tmp_path: Path, writers: list[Writer], clock: Clock
) -> None:
    """A write that fails half way (file size limit) is cut back; the retry stores each row once."""
    w = make(writers, tmp_path, clock, sync_write=True)
    w.core.handle([msg(s) for s in range(5)])
    assert w.csv.flush(clock.now)
    size = w.core.counters()["bytes_in_file"]
    assert isinstance(size, int)
    w.core.handle([msg(s) for s in range(5, 200)])
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, old_limit[1]))
    try:
        ok = w.csv.flush(clock.now)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert not ok
    assert w.core.counters()["write_errors"] == 1
    [path] = tmp_path.glob("data-*.csv")
    assert path.stat().st_size == size  # the partial write was cut back
    clock.now += 60
    w.csv.tick(clock.now)
    assert [r["seq"] for r in stored(tmp_path)] == [str(s) for s in range(200)]
