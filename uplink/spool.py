"""The uplink's durable spool: every reading lands here before any attempt to send it.

SQLite (stdlib) in WAL mode, so the receive loop and each output's Worker thread keep their
own connection and none blocks another for longer than one short transaction. A row is deleted
only when every enabled output (uplink/positions.py: the HTTP server, InfluxDB, MQTT) has
delivered it or dead-lettered it; nothing leaves the spool any other way except the size cap,
which is counted (in all, and per output that had not sent the row yet) and logged.

Each output keeps its own position: `outputs.acked` (every row up to that id is done for the
output) plus `output_acks`, the few ids done beyond it (out-of-order acknowledgements: MQTT
PUBACKs, a partial write's dead letters). One slow or dead output never holds back another;
it only keeps rows in the spool.

The `progress` table keeps, per (sensor_id, session), the highest seq received and the ranges
still missing below it, committed in the same transaction as the readings: after a restart the
uplink knows exactly what it already has, so it asks the readers for what it missed (and only
that) and never mistakes a reading it sent long ago for a new one.

synchronous=NORMAL: a committed insert survives a crash or kill -9 of the process; a power cut
can lose the last few transactions (the writer's CSV files still have those readings).

Spooled ids are SQLite rowids without AUTOINCREMENT, so new rows get max(id)+1 and ignored
duplicates consume no id (AUTOINCREMENT would burn one per ignored duplicate). Rows only ever
leave from the old end (once every output is past them, or by the cap), so the live ids form
one contiguous range and depths are differences of ids: O(log n) queries instead of COUNT(*)
over millions of rows. One catch: into an empty table SQLite would number from 1 again, below
the outputs' positions; `_keep_ids_rising` makes the next id continue above them instead.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from powmon.common.errors import UplinkError
from powmon.common.schema.readings import Reading
from powmon.sink.api import StreamState

BUSY_TIMEOUT_S: Final = 10.0
MAX_PROGRESS: Final = 4096  # streams remembered; the least recently updated are forgotten

# A spooled reading's columns, spelled here once, in the order of Reading's fields (a row's
# first nine columns are a Reading), then when it was received. Every statement below and in
# positions.py is built from them once, at import: SQL text never holds a value, and nothing
# is assembled at runtime.
_COLUMN_TYPES: Final = (
    ("sensor_id", "TEXT"), ("session", "TEXT"), ("seq", "INTEGER"), ("ts_ns", "INTEGER"),
    ("raw", "REAL"), ("volts", "REAL"), ("amps", "REAL"), ("watts", "REAL"),
    ("flags", "INTEGER"), ("received_ns", "INTEGER"),
)
COLUMNS: Final = ", ".join(name for name, _ in _COLUMN_TYPES)
READING_FIELDS: Final = ", ".join(name for name, _ in _COLUMN_TYPES[:-1])  # a Reading's
_DEFINITIONS: Final = ", ".join(f"{name} {kind} NOT NULL" for name, kind in _COLUMN_TYPES)

# The oldest and newest row ids, each by its own lookup in the rowid B-tree: SQLite answers a
# lone min() or max() in O(log n), but `SELECT min(id), max(id)` scans the whole table (7 ms
# at 80,000 rows, and this runs on every insert).
ID_RANGE: Final = "SELECT (SELECT min(id) FROM readings), (SELECT max(id) FROM readings)"
_MARKS: Final = ", ".join("?" * len(_COLUMN_TYPES))
_INSERT: Final = f"INSERT OR IGNORE INTO readings ({COLUMNS}) VALUES ({_MARKS})"  # noqa: S608
_PEEK: Final = f"SELECT id, {COLUMNS} FROM readings ORDER BY id LIMIT ?"  # noqa: S608
# Rows up to an id that at least one output has neither passed (acked) nor acked out of order.
_UNSENT_UP_TO: Final = (
    f"SELECT {READING_FIELDS} FROM readings r "  # noqa: S608
    "WHERE r.id <= ? AND r.sensor_id != '' AND EXISTS (SELECT 1 FROM outputs o "
    "WHERE o.acked < r.id AND NOT EXISTS (SELECT 1 FROM output_acks a "
    "WHERE a.output = o.name AND a.id = r.id))"
)
_UNSPOOL_DEAD: Final = (
    "DELETE FROM readings WHERE (sensor_id, session, seq) IN "
    "(SELECT sensor_id, session, seq FROM dead_letter)"
)
_REQUEUE: Final = (
    f"INSERT OR IGNORE INTO readings ({COLUMNS}) "  # noqa: S608
    f"SELECT {COLUMNS} FROM dead_letter ORDER BY id"
)
# A placeholder row that makes the next rowid continue above the outputs' positions; its
# empty sensor_id can never be a reading's (the decoder refuses empty ids).
_PLACEHOLDER: Final = (
    f"INSERT INTO readings (id, {COLUMNS}) "  # noqa: S608
    "VALUES (?, '', '', 0, 0, 0, 0, 0, 0, 0, 0)"
)
_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY, {_DEFINITIONS},
    UNIQUE (sensor_id, session, seq)
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY, {_DEFINITIONS},
    status INTEGER, reason TEXT NOT NULL, dead_ns INTEGER NOT NULL,
    output TEXT NOT NULL DEFAULT 'http'
);
CREATE TABLE IF NOT EXISTS outputs (
    name TEXT PRIMARY KEY, acked INTEGER NOT NULL, dropped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS output_acks (
    output TEXT NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (output, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS progress (
    sensor_id TEXT NOT NULL, session TEXT NOT NULL, last_seq INTEGER NOT NULL,
    floor INTEGER NOT NULL, missing TEXT NOT NULL, updated_ns INTEGER NOT NULL,
    PRIMARY KEY (sensor_id, session)
);
"""
_SAVE_PROGRESS: Final = (
    "INSERT OR REPLACE INTO progress (sensor_id, session, last_seq, floor, missing, updated_ns) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_PRUNE_PROGRESS: Final = (
    "DELETE FROM progress WHERE rowid NOT IN "
    "(SELECT rowid FROM progress ORDER BY updated_ns DESC LIMIT ?)"
)


@dataclass(frozen=True, slots=True)
class Spooled:
    """A spooled reading with its row id (what ack and dead_letter take)."""

    id: int
    reading: Reading
    received_ns: int


def row_of(found: tuple[Any, ...]) -> Spooled:
    """A Spooled from `SELECT id, {COLUMNS}`."""
    return Spooled(found[0], Reading(*found[1:10]), found[10])


@dataclass(frozen=True, slots=True)
class AddResult:
    inserted: int
    duplicates: int
    dropped: int
    lost: tuple[Reading, ...] = ()  # dropped rows some output had not sent: named in its log


class Spool:
    """One connection to the spool file; make one per thread (sqlite3 connections are not
    shared across threads)."""

    def __init__(self, path: Path, max_rows: int) -> None:
        self.path = path
        self.max_rows = max_rows
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            with self.transaction():  # IMMEDIATE: two connections opening at once migrate once
                _migrate(self.db)
        except (OSError, sqlite3.Error) as err:
            raise UplinkError(f"cannot open uplink spool {str(path)!r}: {err}") from err

    def close(self) -> None:
        self.db.close()

    def add(
        self, readings: Sequence[Reading], now_ns: int | None = None,
        progress: Sequence[StreamState] = (),
    ) -> AddResult:
        """Insert one receive batch and its progress in one transaction, with the size cap."""
        if not readings and not progress:
            return AddResult(0, 0, 0)
        received = time.time_ns() if now_ns is None else now_ns
        # A generator, not a list: SQLite binds each row as it goes, and a receive batch is
        # not copied once more in memory.
        rows = ((*r, received) for r in readings)  # a Reading is the first nine columns
        with self.transaction():
            placeholder = self._keep_ids_rising()
            before = self.db.total_changes
            self.db.executemany(_INSERT, rows)
            inserted = self.db.total_changes - before
            self._drop_placeholder(placeholder)
            dropped, lost = self._enforce_cap()
            self.db.executemany(
                _SAVE_PROGRESS,
                ((p.sensor_id, p.session, p.last_seq, p.floor, json.dumps(p.missing), received)
                 for p in progress),
            )
        return AddResult(inserted, len(readings) - inserted, dropped, lost)

    def progress(self) -> list[StreamState]:
        """Every remembered stream, after forgetting all but the MAX_PROGRESS newest."""
        with self.transaction():
            self.db.execute(_PRUNE_PROGRESS, (MAX_PROGRESS,))
        cur = self.db.execute("SELECT sensor_id, session, last_seq, floor, missing FROM progress")
        return [
            StreamState(
                sensor, session, last, floor, tuple((lo, hi) for lo, hi in json.loads(gaps))
            )
            for sensor, session, last, floor, gaps in cur.fetchall()
        ]

    def _keep_ids_rising(self) -> int | None:
        """In an empty table, put a placeholder at the highest output position, so that new
        rows are numbered above every position (SQLite would restart at 1). Its id, or None."""
        if self.db.execute("SELECT 1 FROM readings LIMIT 1").fetchone() is not None:
            return None
        (floor,) = self.db.execute("SELECT max(acked) FROM outputs").fetchone()
        if not floor:
            return None
        self.db.execute(_PLACEHOLDER, (floor,))
        return int(floor)

    def _drop_placeholder(self, placeholder: int | None) -> None:
        if placeholder is not None:
            self.db.execute("DELETE FROM readings WHERE id = ?", (placeholder,))

    def _enforce_cap(self) -> tuple[int, tuple[Reading, ...]]:
        """Drop the oldest rows past max_rows; count, per output, the rows it had not sent.
        Returns how many rows went, and those of them some output had not sent (lost)."""
        lo, top = self.db.execute(ID_RANGE).fetchone()
        if top is None or top - self.max_rows < lo:
            return 0, ()
        cut = top - self.max_rows
        unsent = tuple(Reading(*row) for row in self.db.execute(_UNSENT_UP_TO, (cut,)))
        behind = self.db.execute("SELECT name, acked FROM outputs WHERE acked < ?", (cut,))
        for name, acked in behind.fetchall():
            (early,) = self.db.execute(
                "SELECT count(*) FROM output_acks WHERE output = ? AND id <= ?", (name, cut)
            ).fetchone()
            lost = cut - max(acked, lo - 1) - early
            self.db.execute("UPDATE outputs SET acked = ?, dropped = dropped + ? WHERE name = ?",
                            (cut, lost, name))
            self.db.execute("DELETE FROM output_acks WHERE output = ? AND id <= ?", (name, cut))
        cur = self.db.execute("DELETE FROM readings WHERE id <= ?", (cut,))
        return cur.rowcount, unsent

    def peek(self, limit: int) -> list[Spooled]:
        """The oldest `limit` rows, oldest first (not removed), whatever the outputs did."""
        return [row_of(found) for found in self.db.execute(_PEEK, (limit,)).fetchall()]

    def requeue_dead(self) -> int:
        """Move every dead-lettered reading back into the queue (after fixing the server).

        Each goes in as a new row at the end, for every output: an output that had delivered
        it gets it again (at least once; the same key). A copy still spooled for another output
        is replaced by the new row, else the output that refused it would never see it again.
        """
        with self.transaction():
            self.db.execute(_UNSPOOL_DEAD)
            placeholder = self._keep_ids_rising()
            self.db.execute(_REQUEUE)
            self._drop_placeholder(placeholder)
            return self.db.execute("DELETE FROM dead_letter").rowcount

    def depth(self) -> int:
        """Rows some output has still to send (an id difference; see the module docstring).

        With no output registered (a spool only received into), every row counts. After
        --requeue-dead-letters the old places of requeued rows count until passed.
        """
        lo, hi = self.db.execute(ID_RANGE).fetchone()
        if lo is None:
            return 0
        (done,) = self.db.execute("SELECT min(acked) FROM outputs").fetchone()
        return int(hi - max(lo - 1, done if done is not None else lo - 1))

    def dead_count(self, output: str | None = None) -> int:
        """Dead letters in all, or those one output refused."""
        if output is None:
            (count,) = self.db.execute("SELECT count(*) FROM dead_letter").fetchone()
        else:
            (count,) = self.db.execute(
                "SELECT count(*) FROM dead_letter WHERE output = ?", (output,)
            ).fetchone()
        return int(count)

    def transaction(self) -> _Transaction:
        return _Transaction(self.db, self.path)


def _migrate(db: sqlite3.Connection) -> None:
    """Spools from before per-output positions: their dead letters were the HTTP uplink's."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(dead_letter)")}
    if "output" not in columns:
        db.execute("ALTER TABLE dead_letter ADD COLUMN output TEXT NOT NULL DEFAULT 'http'")


class _Transaction:
    """BEGIN IMMEDIATE .. COMMIT, ROLLBACK on error; sqlite errors become UplinkError.

    IMMEDIATE takes the write lock up front, so two connections never deadlock upgrading a
    read lock; the busy timeout makes the second writer wait its turn.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise UplinkError(f"uplink spool {str(self._path)!r}: {err}") from err

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: object) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as commit_err:
                self._db.execute("ROLLBACK")
                raise UplinkError(
                    f"uplink spool {str(self._path)!r}: commit failed: {commit_err}"
                ) from commit_err
            return
        self._db.execute("ROLLBACK")
        if isinstance(err, sqlite3.Error):
            raise UplinkError(f"uplink spool {str(self._path)!r}: {err}") from err
