"""The uplink spool: durable, deduplicating, capped, with a dead-letter table."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from powmon.common.schema import Reading
from powmon.uplink.spool import Spool


def reading(seq: int, sensor: str = "VIC", session: str = "s1") -> Reading:
    return Reading(sensor, session, seq, 1_700_000_000_000_000_000 + seq, 512.0, 0.02, 0.3,
                   1.5, 0)  # fmt: skip


@pytest.fixture
def open_spool() -> Iterator[Callable[[Path, int], Spool]]:
    """Open spools; all are closed at teardown."""
    opened: list[Spool] = []

    def make(path: Path, max_rows: int = 1000) -> Spool:
        opened.append(Spool(path, max_rows))
        return opened[-1]

    yield make
    for spool in opened:
        spool.close()


@pytest.fixture
def spool(tmp_path: Path, open_spool: Callable[[Path, int], Spool]) -> Spool:
    return open_spool(tmp_path / "spool.sqlite3", 1000)


def test_insert_then_peek_returns_readings_oldest_first(spool: Spool) -> None:
    """What goes in comes out unchanged, in arrival order."""
    sent = [reading(i) for i in range(5)]
    result = spool.add(sent)
    assert (result.inserted, result.duplicates, result.dropped) == (5, 0, 0)
    assert [row.reading for row in spool.peek(10)] == sent
    assert spool.depth() == 5


def test_duplicate_key_is_stored_once(spool: Spool) -> None:
    """INSERT OR IGNORE on (sensor_id, session, seq): a re-delivered reading is not stored twice."""
    spool.add([reading(0), reading(1)])
    again = spool.add([reading(1), reading(2), reading(1, session="s2")])
    assert (again.inserted, again.duplicates) == (2, 1)
    keys = [row.reading.key for row in spool.peek(10)]
    assert keys == [("VIC", "s1", 0), ("VIC", "s1", 1), ("VIC", "s1", 2), ("VIC", "s2", 1)]


def test_ack_deletes_only_the_acknowledged_rows(spool: Spool) -> None:
    """Rows leave the spool only when acked; the rest stay, in order."""
    spool.add([reading(i) for i in range(6)])
    batch = spool.peek(4)
    assert spool.ack(row.id for row in batch) == 4
    assert [row.reading.seq for row in spool.peek(10)] == [4, 5]
    assert spool.depth() == 2


def test_cap_drops_the_oldest_and_counts_them(
    tmp_path: Path, open_spool: Callable[[Path, int], Spool]
) -> None:
    """Past UPLINK_SPOOL_MAX the oldest rows go, and the caller learns how many."""
    small = open_spool(tmp_path / "small.sqlite3", 10)
    first = small.add([reading(i) for i in range(8)])
    second = small.add([reading(i) for i in range(8, 15)])
    assert (first.dropped, second.dropped) == (0, 5)
    assert [row.reading.seq for row in small.peek(100)] == list(range(5, 15))
    assert small.depth() == 10


def test_dead_letter_moves_rows_with_status_and_reason(spool: Spool) -> None:
    """A refused batch leaves the queue but is kept, with the server's answer."""
    spool.add([reading(i) for i in range(3)])
    first = spool.peek(2)
    assert spool.dead_letter([row.id for row in first], 400, "HTTP 400: bad sensor") == 2
    assert [row.reading.seq for row in spool.peek(10)] == [2]
    assert spool.dead_count() == 2
    with closing(sqlite3.connect(spool.path)) as db:
        rows = db.execute("SELECT seq, status, reason FROM dead_letter ORDER BY seq").fetchall()
    assert rows == [(0, 400, "HTTP 400: bad sensor"), (1, 400, "HTTP 400: bad sensor")]


def test_requeue_dead_letters_puts_them_back(spool: Spool) -> None:
    """After the server is fixed, dead-lettered readings can be sent again."""
    spool.add([reading(i) for i in range(3)])
    spool.dead_letter([row.id for row in spool.peek(3)], None, "cannot encode")
    assert spool.depth() == 0
    assert spool.requeue_dead() == 3
    assert [row.reading.seq for row in spool.peek(10)] == [0, 1, 2]
    assert spool.dead_count() == 0


def test_spool_survives_reopen(tmp_path: Path, open_spool: Callable[[Path, int], Spool]) -> None:
    """Committed rows are on disk: a new process (a new connection) finds them."""
    path = tmp_path / "spool.sqlite3"
    first = open_spool(path, 1000)
    first.add([reading(i) for i in range(4)])
    first.ack([first.peek(1)[0].id])
    first.close()
    second = open_spool(path, 1000)
    assert [row.reading.seq for row in second.peek(10)] == [1, 2, 3]
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_two_connections_share_the_queue(
    tmp_path: Path, open_spool: Callable[[Path, int], Spool]
) -> None:
    """The receiver and the sender each have a connection; one's inserts the other acks."""
    path = tmp_path / "spool.sqlite3"
    receiver, sender = open_spool(path, 1000), open_spool(path, 1000)
    receiver.add([reading(i) for i in range(3)])
    assert sender.ack(row.id for row in sender.peek(2)) == 2
    receiver.add([reading(3)])
    assert [row.reading.seq for row in sender.peek(10)] == [2, 3]
    assert receiver.depth() == 2


def test_oldest_reports_count_up_to_limit_and_age(spool: Spool) -> None:
    """The sender's batch trigger: how many are waiting (capped) and since when."""
    assert spool.oldest(10) == (0, None)
    spool.add([reading(0)], now_ns=111)
    spool.add([reading(i) for i in range(1, 20)], now_ns=222)
    assert spool.oldest(10) == (10, 111)
