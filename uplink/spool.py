"""The uplink's durable spool: every reading lands here before any attempt to send it.

SQLite (stdlib) in WAL mode, so the receive loop and the sender thread each keep their own
connection and neither blocks the other for longer than one short transaction. A row is deleted
only when the server acknowledged it with a 2xx, or moved to `dead_letter` when the server
refused it for good; nothing leaves the spool any other way except the size cap, which is
counted and logged by the caller.

The `progress` table keeps, per (sensor_id, session), the highest seq received and the ranges
still missing below it, committed in the same transaction as the readings: after a restart the
uplink knows exactly what it already has, so it asks the readers for what it missed (and only
that) and never mistakes a reading it sent long ago for a new one.

synchronous=NORMAL: a committed insert survives a crash or kill -9 of the process; a power cut
can lose the last few transactions (the writer's CSV files still have those readings).

Row ids are SQLite rowids without AUTOINCREMENT, so new rows get max(id)+1 and ignored
duplicates consume no id. Rows only ever leave from the old end (ack and dead letter take the
oldest rows the sender peeked, the cap drops the oldest), so the live ids form one contiguous
range and max(id) - min(id) + 1 is the depth: an O(log n) query instead of COUNT(*) over
millions of rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from powmon.common.errors import UplinkError
from powmon.common.schema import Reading
from powmon.sink.tracker import StreamState

BUSY_TIMEOUT_S: Final = 10.0
MAX_PROGRESS: Final = 4096  # streams remembered; the least recently updated are forgotten

# The column lists are spelled out in each statement: SQL text is never assembled at runtime.
_INSERT: Final = (
    "INSERT OR IGNORE INTO readings (sensor_id, session, seq, ts_ns, raw, volts, amps, watts, "
    "flags, received_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PEEK: Final = (
    "SELECT id, sensor_id, session, seq, ts_ns, raw, volts, amps, watts, flags, received_ns "
    "FROM readings ORDER BY id LIMIT ?"
)
_BURY: Final = (
    "INSERT INTO dead_letter (sensor_id, session, seq, ts_ns, raw, volts, amps, watts, flags, "
    "received_ns, status, reason, dead_ns) SELECT sensor_id, session, seq, ts_ns, raw, volts, "
    "amps, watts, flags, received_ns, ?, ?, ? FROM readings WHERE id = ?"
)
_REQUEUE: Final = (
    "INSERT OR IGNORE INTO readings (sensor_id, session, seq, ts_ns, raw, volts, amps, watts, "
    "flags, received_ns) SELECT sensor_id, session, seq, ts_ns, raw, volts, amps, watts, flags, "
    "received_ns FROM dead_letter ORDER BY id"
)
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    sensor_id TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL, raw REAL NOT NULL, volts REAL NOT NULL, amps REAL NOT NULL,
    watts REAL NOT NULL, flags INTEGER NOT NULL, received_ns INTEGER NOT NULL,
    UNIQUE (sensor_id, session, seq)
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    sensor_id TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL, raw REAL NOT NULL, volts REAL NOT NULL, amps REAL NOT NULL,
    watts REAL NOT NULL, flags INTEGER NOT NULL, received_ns INTEGER NOT NULL,
    status INTEGER, reason TEXT NOT NULL, dead_ns INTEGER NOT NULL
);
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
class Row:
    """A spooled reading with its row id (what ack and dead_letter take)."""

    id: int
    reading: Reading
    received_ns: int


@dataclass(frozen=True, slots=True)
class AddResult:
    inserted: int
    duplicates: int
    dropped: int


class Spool:
    """One connection to the spool file; make one per thread (sqlite3 connections are not
    shared across threads)."""

    def __init__(self, path: Path, max_rows: int) -> None:
        self.path = path
        self.max_rows = max_rows
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise UplinkError(f"cannot open uplink spool {str(path)!r}: {err}") from err

    def close(self) -> None:
        self._db.close()

    def add(
        self, readings: Sequence[Reading], now_ns: int | None = None,
        progress: Sequence[StreamState] = (),
    ) -> AddResult:  # fmt: skip
        """Insert one receive batch and its progress in one transaction, with the size cap."""
        if not readings and not progress:
            return AddResult(0, 0, 0)
        received = time.time_ns() if now_ns is None else now_ns
        rows = [
            (r.sensor_id, r.session, r.seq, r.ts_ns, r.raw, r.volts, r.amps, r.watts, r.flags,
             received)
            for r in readings
        ]  # fmt: skip
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany(_INSERT, rows)
            inserted = self._db.total_changes - before
            dropped = self._enforce_cap()
            self._db.executemany(
                _SAVE_PROGRESS,
                ((p.sensor_id, p.session, p.last_seq, p.floor, json.dumps(p.missing), received)
                 for p in progress),
            )  # fmt: skip
        return AddResult(inserted, len(rows) - inserted, dropped)

    def progress(self) -> list[StreamState]:
        """Every remembered stream, after forgetting all but the MAX_PROGRESS newest."""
        with self._transaction():
            self._db.execute(_PRUNE_PROGRESS, (MAX_PROGRESS,))
        cur = self._db.execute("SELECT sensor_id, session, last_seq, floor, missing FROM progress")
        return [
            StreamState(
                sensor, session, last, floor, tuple((lo, hi) for lo, hi in json.loads(gaps))
            )
            for sensor, session, last, floor, gaps in cur.fetchall()
        ]

    def _enforce_cap(self) -> int:
        (top,) = self._db.execute("SELECT max(id) FROM readings").fetchone()
        if top is None:
            return 0
        cur = self._db.execute("DELETE FROM readings WHERE id <= ?", (top - self.max_rows,))
        return cur.rowcount

    def peek(self, limit: int) -> list[Row]:
        """The oldest `limit` rows, oldest first (not removed)."""
        cur = self._db.execute(_PEEK, (limit,))
        return [
            Row(row[0], Reading(*row[1:10]), row[10])
            for row in cur.fetchall()
        ]  # fmt: skip

    def oldest(self, limit: int) -> tuple[int, int | None]:
        """(how many rows are waiting, up to `limit`; received_ns of the oldest or None)."""
        first = self._db.execute("SELECT received_ns FROM readings ORDER BY id LIMIT 1").fetchone()
        if first is None:
            return 0, None
        (count,) = self._db.execute(
            "SELECT count(*) FROM (SELECT 1 FROM readings ORDER BY id LIMIT ?)", (limit,)
        ).fetchone()
        return int(count), int(first[0])

    def ack(self, ids: Iterable[int]) -> int:
        """The server has these rows: delete them."""
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany("DELETE FROM readings WHERE id = ?", ((i,) for i in ids))
            return self._db.total_changes - before

    def dead_letter(self, ids: Iterable[int], status: int | None, reason: str) -> int:
        """The server refused these rows for good: move them, atomically, to dead_letter."""
        now = time.time_ns()
        keys = [(i,) for i in ids]
        with self._transaction():
            self._db.executemany(_BURY, ((status, reason, now, k[0]) for k in keys))
            before = self._db.total_changes
            self._db.executemany("DELETE FROM readings WHERE id = ?", keys)
            return self._db.total_changes - before

    def requeue_dead(self) -> int:
        """Move every dead-lettered reading back into the queue (after fixing the server)."""
        with self._transaction():
            self._db.execute(_REQUEUE)
            return self._db.execute("DELETE FROM dead_letter").rowcount

    def depth(self) -> int:
        """Rows waiting to be sent (see the module docstring for why this is not COUNT(*))."""
        lo, hi = self._db.execute("SELECT min(id), max(id) FROM readings").fetchone()
        return 0 if lo is None else int(hi - lo + 1)

    def dead_count(self) -> int:
        (count,) = self._db.execute("SELECT count(*) FROM dead_letter").fetchone()
        return int(count)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path)


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
                 tb: object) -> None:  # fmt: skip
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
