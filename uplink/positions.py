"""Each output's position in the one spool: what it has still to send, and what it is done with.

The uplink keeps ONE spool (one subscription, one gap recovery) and several outputs (HTTP,
InfluxDB, MQTT), like Telegraf's agent with its outputs: each output reads the spool at its
own pace and marks rows done (delivered, or dead-lettered with the output's name); a row is
deleted once every registered output is done with it. Positions live in the spool's `outputs`
table (`acked`: every row up to this id is done) and `output_acks` (the few ids done beyond
it, because acknowledgements can come out of order: MQTT PUBACKs, the lines a partial write
refused). Both change in the same transaction as the dead letters and the deletes, so a crash
at any moment leaves a position that is exact or behind (then rows go again: at least once).

Outputs added between runs start after the newest row spooled at that time (they get readings
from their first start on, not whatever backlog another output happened to hold), except on a
spool that had no outputs table yet or no outputs at all (a fresh spool, or one written before
positions existed): there every output starts at the oldest row, so an upgraded uplink sends
what the old one had not. An output removed from the settings no longer holds rows: its
position is forgotten at the next start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Final

from powmon.uplink.spool import COLUMNS, ID_RANGE, Spool, Spooled, row_of

log = logging.getLogger(__name__)

# Rows not done for an output: beyond its position and not acked out of order. The statements
# are built at import from spool.py's one column list: SQL text never holds a value.
_PENDING: Final = (
    f"SELECT id, {COLUMNS} FROM readings WHERE id > ? AND id NOT IN "  # noqa: S608
    "(SELECT id FROM output_acks WHERE output = ?) ORDER BY id LIMIT ?"
)
_FIRST_PENDING: Final = (
    "SELECT id, received_ns FROM readings WHERE id > ? AND id NOT IN "
    "(SELECT id FROM output_acks WHERE output = ?) ORDER BY id LIMIT 1"
)
_COUNT_PENDING: Final = (
    "SELECT count(*) FROM (SELECT 1 FROM readings WHERE id > ? AND id NOT IN "
    "(SELECT id FROM output_acks WHERE output = ?) ORDER BY id LIMIT ?)"
)
_BURY: Final = (
    f"INSERT INTO dead_letter ({COLUMNS}, status, reason, dead_ns, output) "  # noqa: S608
    f"SELECT {COLUMNS}, ?, ?, ?, ? FROM readings WHERE id = ?"
)


def register_outputs(spool: Spool, names: Sequence[str]) -> None:
    """Make the positions table say exactly `names` (see the module docstring), then delete
    the rows no remaining output needs."""
    db = spool.db
    with spool.transaction():
        known = {name for (name,) in db.execute("SELECT name FROM outputs")}
        lo, hi = db.execute(ID_RANGE).fetchone()
        start = (hi or 0) if known else (lo or 1) - 1
        for name in names:
            if name not in known:
                db.execute("INSERT INTO outputs (name, acked) VALUES (?, ?)", (name, start))
                log.info("output %s starts at spool row %d", name, start + 1)
        for name in known - set(names):
            db.execute("DELETE FROM outputs WHERE name = ?", (name,))
            db.execute("DELETE FROM output_acks WHERE output = ?", (name,))
            log.info("output %s is no longer configured; its position is forgotten", name)
        _prune(spool)


def _prune(spool: Spool) -> None:
    (done,) = spool.db.execute("SELECT min(acked) FROM outputs").fetchone()
    if done is not None:
        spool.db.execute("DELETE FROM readings WHERE id <= ?", (done,))


class Position:
    """One output's view of the spool, on that output's own connection (its thread's)."""

    def __init__(self, spool: Spool, name: str) -> None:
        self.spool = spool
        self.name = name
        self._dropped_at_start = self._dropped_total()

    def _acked(self) -> int:
        row = self.spool.db.execute("SELECT acked FROM outputs WHERE name = ?", (self.name,))
        found = row.fetchone()
        if found is None:
            raise LookupError(f"output {self.name!r} is not registered in {self.spool.path}")
        return int(found[0])

    def pending(self, limit: int) -> list[Spooled]:
        """The oldest `limit` rows this output has not done, oldest first."""
        cur = self.spool.db.execute(_PENDING, (self._acked(), self.name, limit))
        return [row_of(found) for found in cur.fetchall()]

    def oldest(self, limit: int) -> tuple[int, int | None]:
        """(rows waiting for this output, up to `limit`; received_ns of the oldest or None)."""
        acked = self._acked()
        first = self.spool.db.execute(_FIRST_PENDING, (acked, self.name)).fetchone()
        if first is None:
            return 0, None
        (count,) = self.spool.db.execute(_COUNT_PENDING, (acked, self.name, limit)).fetchone()
        return int(count), int(first[1])

    def depth(self) -> int:
        """Rows this output has still to send: an id difference, cheap on millions of rows."""
        db = self.spool.db
        (top,) = db.execute("SELECT max(id) FROM readings").fetchone()
        acked = self._acked()
        (early,) = db.execute(
            "SELECT count(*) FROM output_acks WHERE output = ?", (self.name,)
        ).fetchone()
        return max(0, int((top or acked) - acked - early))

    def dropped(self) -> int:
        """Rows the size cap dropped before this output sent them, since this Position."""
        return self._dropped_total() - self._dropped_at_start

    def _dropped_total(self) -> int:
        row = self.spool.db.execute("SELECT dropped FROM outputs WHERE name = ?", (self.name,))
        found = row.fetchone()
        return 0 if found is None else int(found[0])

    def ack(self, ids: Iterable[int]) -> None:
        """This output delivered these rows."""
        with self.spool.transaction():
            self._done(ids)

    def dead_letter(self, ids: Iterable[int], status: int | None, reason: str) -> int:
        """This output can never deliver these rows: copy them to dead_letter (with the output's
        name, the status and the reason) and count them done. Returns how many were copied."""
        keys = list(ids)
        now = time.time_ns()
        with self.spool.transaction():
            before = self.spool.db.total_changes
            self.spool.db.executemany(_BURY, ((status, reason, now, self.name, i) for i in keys))
            moved = self.spool.db.total_changes - before
            self._done(keys)
        return moved

    def _done(self, ids: Iterable[int]) -> None:
        db = self.spool.db
        acked = self._acked()
        db.executemany(
            "INSERT OR IGNORE INTO output_acks (output, id) VALUES (?, ?)",
            ((self.name, i) for i in ids if i > acked),
        )
        first = db.execute(_FIRST_PENDING, (acked, self.name)).fetchone()
        if first is not None:
            reach = int(first[0]) - 1
        else:
            (top,) = db.execute("SELECT max(id) FROM readings").fetchone()
            reach = acked if top is None else max(acked, int(top))
        if reach > acked:
            db.execute("UPDATE outputs SET acked = ? WHERE name = ?", (reach, self.name))
            db.execute("DELETE FROM output_acks WHERE output = ? AND id <= ?", (self.name, reach))
            _prune(self.spool)
