"""The uplink spool: durable, deduplicating, capped, with a dead-letter table."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from powmon.common.schema.readings import Reading
from powmon.uplink.positions import Position, register_outputs
from powmon.uplink.spool import Spool


def reading(seq: int, sensor: str = "VIC", session: str = "s1") -> Reading:
    return Reading(sensor, session, seq, 1_700_000_000_000_000_000 + seq, 512.0, 0.02, 0.3,
                   1.5, 0)


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


def test_dead_letter_moves_rows_with_status_reason_and_output(spool: Spool) -> None:
    """A refused batch leaves the output's queue but is kept, with the answer and the output."""
    register_outputs(spool, ["http"])
    http = Position(spool, "http")
    spool.add([reading(i) for i in range(3)])
    first = http.pending(2)
    assert http.dead_letter([row.id for row in first], 400, "HTTP 400: bad sensor") == 2
    assert [row.reading.seq for row in http.pending(10)] == [2]
    assert spool.dead_count() == 2 and spool.dead_count("http") == 2
    with closing(sqlite3.connect(spool.path)) as db:
        rows = db.execute("SELECT seq, status, reason, output FROM dead_letter ORDER BY seq")
        assert rows.fetchall() == [(0, 400, "HTTP 400: bad sensor", "http"),
                                   (1, 400, "HTTP 400: bad sensor", "http")]


def test_requeue_dead_letters_puts_them_back_for_every_output(spool: Spool) -> None:
    """After the server is fixed, dead-lettered readings go again, also when another output
    still held the same reading: the requeued copy replaces it."""
    register_outputs(spool, ["http", "mqtt"])
    http = Position(spool, "http")
    spool.add([reading(i) for i in range(3)])
    http.dead_letter([row.id for row in http.pending(3)], None, "cannot encode")
    assert http.depth() == 0
    assert spool.requeue_dead() == 3
    assert [row.reading.seq for row in http.pending(10)] == [0, 1, 2]
    assert [row.reading.seq for row in Position(spool, "mqtt").pending(10)] == [0, 1, 2]
    assert spool.dead_count() == 0


def test_spool_survives_reopen(tmp_path: Path, open_spool: Callable[[Path, int], Spool]) -> None:
    """Committed rows and positions are on disk: a new process (connection) finds them."""
    path = tmp_path / "spool.sqlite3"
    first = open_spool(path, 1000)
    register_outputs(first, ["http"])
    first.add([reading(i) for i in range(4)])
    Position(first, "http").ack([1])
    first.close()
    second = open_spool(path, 1000)
    register_outputs(second, ["http"])
    assert [row.reading.seq for row in Position(second, "http").pending(10)] == [1, 2, 3]
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_two_connections_share_the_queue(
    tmp_path: Path, open_spool: Callable[[Path, int], Spool]
) -> None:
    """The receiver and an output each have a connection; one's inserts the other acks."""
    path = tmp_path / "spool.sqlite3"
    receiver, sender = open_spool(path, 1000), open_spool(path, 1000)
    register_outputs(receiver, ["http"])
    http = Position(sender, "http")
    receiver.add([reading(i) for i in range(3)])
    http.ack(row.id for row in http.pending(2))
    receiver.add([reading(3)])
    assert [row.reading.seq for row in http.pending(10)] == [2, 3]
    assert receiver.depth() == 2


def test_oldest_reports_count_up_to_limit_and_age(spool: Spool) -> None:
    """The output's batch trigger: how many are waiting for it (capped) and since when."""
    register_outputs(spool, ["http"])
    http = Position(spool, "http")
    assert http.oldest(10) == (0, None)
    spool.add([reading(0)], now_ns=111)
    spool.add([reading(i) for i in range(1, 20)], now_ns=222)
    assert http.oldest(10) == (10, 111)
    http.ack([1])
    assert http.oldest(10) == (10, 222)


def test_a_row_stays_until_every_output_is_done_with_it(spool: Spool) -> None:
    """Each output has its own position; a row is deleted only when all are past it, and
    one output's progress never moves another's."""
    register_outputs(spool, ["http", "mqtt"])
    http, mqtt = Position(spool, "http"), Position(spool, "mqtt")
    spool.add([reading(i) for i in range(5)])
    http.ack(row.id for row in http.pending(5))
    assert (http.depth(), mqtt.depth(), spool.depth()) == (0, 5, 5)
    assert len(spool.peek(10)) == 5
    mqtt.ack(row.id for row in mqtt.pending(3))
    assert [row.reading.seq for row in spool.peek(10)] == [3, 4]
    assert (mqtt.depth(), spool.depth()) == (2, 2)


def test_out_of_order_acks_advance_the_position_when_the_hole_closes(spool: Spool) -> None:
    """Acks beyond the position (PUBACKs out of order, a partial write's dead letters) are
    kept aside; the position moves once the rows before them are done too."""
    register_outputs(spool, ["mqtt"])
    mqtt = Position(spool, "mqtt")
    spool.add([reading(i) for i in range(6)])
    ids = [row.id for row in mqtt.pending(6)]
    mqtt.ack([ids[2], ids[4]])
    assert [row.reading.seq for row in mqtt.pending(10)] == [0, 1, 3, 5]
    assert mqtt.depth() == 4 and len(spool.peek(10)) == 6
    mqtt.ack([ids[0], ids[1], ids[3]])
    assert [row.reading.seq for row in mqtt.pending(10)] == [5]
    assert [row.reading.seq for row in spool.peek(10)] == [5]


def test_cap_counts_drops_per_output_that_had_not_sent_them(
    tmp_path: Path, open_spool: Callable[[Path, int], Spool]
) -> None:
    """Past UPLINK_SPOOL_MAX the oldest rows go; an output that had delivered them loses
    nothing, one that had not counts each drop, and its position moves past them; the rows
    some output had not sent come back as lost (the core names them in uplink-gaps.csv)."""
    small = open_spool(tmp_path / "small.sqlite3", 10)
    register_outputs(small, ["http", "mqtt"])
    http, mqtt = Position(small, "http"), Position(small, "mqtt")
    small.add([reading(i) for i in range(8)])
    http.ack(row.id for row in http.pending(8))
    mqtt.ack([row.id for row in mqtt.pending(8)][1:2])  # seq 1 delivered out of order
    result = small.add([reading(i) for i in range(8, 15)])
    assert result.dropped == 5
    assert [r.seq for r in result.lost] == [0, 2, 3, 4]  # what mqtt never sent, to be named
    assert (http.dropped(), mqtt.dropped()) == (0, 4)
    assert [row.reading.seq for row in mqtt.pending(100)] == list(range(5, 15))
    assert [row.reading.seq for row in http.pending(100)] == list(range(8, 15))


def test_new_output_starts_at_the_newest_row_and_a_removed_one_holds_nothing(
    spool: Spool,
) -> None:
    """An output added between runs gets readings from its start on (not another output's
    backlog); an output removed from the settings no longer keeps rows in the spool."""
    register_outputs(spool, ["http"])
    spool.add([reading(i) for i in range(3)])
    register_outputs(spool, ["http", "mqtt"])
    spool.add([reading(3)])
    assert [row.reading.seq for row in Position(spool, "mqtt").pending(10)] == [3]
    assert [row.reading.seq for row in Position(spool, "http").pending(10)] == [0, 1, 2, 3]
    register_outputs(spool, ["mqtt"])
    assert [row.reading.seq for row in spool.peek(10)] == [3]


def test_first_positions_on_an_old_spool_take_everything_in_it(spool: Spool) -> None:
    """A spool from before positions (rows, no outputs yet): every output starts at the
    oldest row, so an upgraded uplink sends what the old one had not."""
    spool.add([reading(i) for i in range(3)])
    assert spool.depth() == 3
    register_outputs(spool, ["http"])
    assert [row.reading.seq for row in Position(spool, "http").pending(10)] == [0, 1, 2]


def test_ids_keep_rising_after_the_spool_emptied(spool: Spool) -> None:
    """Once every output is done and the table is empty, new rows still get ids above every
    position (SQLite alone would number from 1 again and they would count as done)."""
    register_outputs(spool, ["http"])
    http = Position(spool, "http")
    spool.add([reading(i) for i in range(3)])
    http.ack(row.id for row in http.pending(3))
    assert spool.peek(10) == []
    spool.add([reading(3)])
    (row,) = http.pending(10)
    assert row.reading.seq == 3 and row.id == 4
    assert spool.depth() == 1


def test_old_dead_letters_belong_to_the_http_output(tmp_path: Path) -> None:
    """A spool written before outputs existed opens, and its dead letters count as http's."""
    path = tmp_path / "old.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE dead_letter (id INTEGER PRIMARY KEY, sensor_id TEXT NOT NULL, "
            "session TEXT NOT NULL, seq INTEGER NOT NULL, ts_ns INTEGER NOT NULL, raw REAL NOT "
            "NULL, volts REAL NOT NULL, amps REAL NOT NULL, watts REAL NOT NULL, flags INTEGER "
            "NOT NULL, received_ns INTEGER NOT NULL, status INTEGER, reason TEXT NOT NULL, "
            "dead_ns INTEGER NOT NULL)"
        )
        db.execute("INSERT INTO dead_letter VALUES (1, 'V', 's', 0, 0, 0, 0, 0, 0, 0, 0, 401, "
                   "'HTTP 401', 0)")
        db.commit()
    spool = Spool(path, 1000)
    try:
        assert spool.dead_count("http") == 1
    finally:
        spool.close()
