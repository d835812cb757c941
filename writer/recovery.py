"""The writer's side of gap filling: its files say where each stream stopped, gaps.csv what is lost.

The state machine is common.gaps (shared with the uplink); what is the writer's own is where it
learns its starting point (the tail of its newest files, and a search for a session the tail
did not show) and where it names what it cannot recover: gaps.csv, one row per lost range with
the reason. Together with the data files it accounts for every reading of every session the
writer heard of: each seq 0..last is either stored once or inside exactly one range there. The
file is made on the first loss, so no gaps.csv (or a header only) means nothing was lost.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from powmon.common.gaps import GapFiller, GapTracker, Lost
from powmon.common.logs import RateLimiter
from powmon.common.replay import ReplayClient, nowhere, take_replayed
from powmon.common.schema import Reading, decode_status, format_ts
from powmon.writer.rotation import LINE_TERMINATOR, FileNaming, scan_session, tail_streams

log = logging.getLogger(__name__)

GAP_LOG: Final = "gaps.csv"
MAX_LOOKUPS: Final = 64  # data file searches for sessions the tail did not show, per start
MAX_UNLOGGED: Final = 10_000  # lost ranges kept while gaps.csv cannot be written
GAP_FIELDS: Final = (
    "detected_at", "sensor_id", "session", "first_seq", "last_seq", "count", "reason",
)  # fmt: skip


class GapLog:
    """Appends lost ranges to `<LOCAL_DATA_ROOT>/gaps.csv`; a failed write raises OSError."""

    def __init__(self, root: Path, *, fsync: bool) -> None:
        self.path = root / GAP_LOG
        self._fsync = fsync

    def write(self, lost: Sequence[Lost]) -> None:
        if not lost:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            out = csv.writer(f, lineterminator=LINE_TERMINATOR)
            if f.tell() == 0:
                out.writerow(GAP_FIELDS)
            out.writerows(
                (format_ts(g.detected_ns), g.sensor_id, g.session, g.first, g.last, g.count,
                 g.reason)
                for g in lost
            )  # fmt: skip
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())


class Recovery:
    """Tracker, filler and gap log of one writer; the writer's loop feeds it and drains it."""

    def __init__(
        self, root: Path, naming: FileNaming, *, fsync: bool, timeout: float, retries: int,
        grace: float, client: ReplayClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._root = root
        self._naming = naming
        self._clock = clock
        self.client = client
        self.tracker = GapTracker(lookup=self._lookup)
        self.filler = GapFiller(
            client.ask if client is not None else nowhere, self.tracker, timeout=timeout,
            retries=retries, grace=grace, clock=clock,
        )  # fmt: skip
        self.gaplog = GapLog(root, fsync=fsync)
        self._unlogged: list[Lost] = []
        self._lookup_until = clock() + 2 * grace
        self._lookups = 0
        self._limiter = RateLimiter()

    def resume(self) -> None:
        """Seed the tracker with what the newest rows on disk say about each stream."""
        tails = tail_streams(self._root, self._naming)
        for (sensor_id, session), tail in tails.items():
            self.tracker.resume(sensor_id, session, tail.last, tail.missing, tail.floor)
            if tail.missing:
                self.filler.opened((sensor_id, session))
        if tails:
            log.info("resuming %d streams from %s", len(tails), self._root)

    def _lookup(self, sensor_id: str, session: str) -> tuple[int, int] | None:
        """Where a session the tail did not show stopped, searched in the data files.

        Only in the first moments after start, when every live reader's heartbeat comes in
        once: later, a session never seen is a new one and starts at 0.
        """
        if self._clock() > self._lookup_until or self._lookups >= MAX_LOOKUPS:
            return None
        self._lookups += 1
        last = scan_session(self._root, self._naming, sensor_id, session)
        return None if last is None else (last, last + 1)

    def status(self, frames: Sequence[bytes]) -> None:
        """A reader's heartbeat: where it answers replay requests, and how far it got."""
        status = decode_status(frames)  # SchemaError is the caller's to count
        if self.client is not None:
            self.client.learn(status)
        self.filler.heartbeat(status)

    def step(self) -> list[Reading]:
        """Take replies (returned: the readings to store), send due requests, log losses."""
        replayed = take_replayed(self.client, self.filler)
        self.filler.tick()
        self.filler.changed.clear()
        lost = self.filler.take_lost()
        for gap in lost:
            ok, held = self._limiter.allow(f"lost/{gap.sensor_id}")
            if ok:
                more = f" ({held} similar suppressed)" if held else ""
                log.warning("lost sensor=%s session=%s seq=%d..%d count=%d reason=%s%s",
                            gap.sensor_id, gap.session, gap.first, gap.last, gap.count,
                            gap.reason, more)  # fmt: skip
        self._unlogged = (self._unlogged + lost)[-MAX_UNLOGGED:]
        if self._unlogged:
            try:
                self.gaplog.write(self._unlogged)
            except OSError as err:
                log.error("cannot write %s: %s; %d lost ranges kept", self.gaplog.path, err,
                          len(self._unlogged))  # fmt: skip
            else:
                self._unlogged = []
        return replayed
