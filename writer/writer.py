"""The writer process: readings from the bus into rotating CSV files, the only data file writer.

A sink on the sink core (sink/api.py), which subscribes, resumes, fills gaps from the readers'
replay buffers and drops duplicates; what is the writer's own is here: rows are buffered and
written once per FLUSH_INTERVAL (or sooner when the buffer grows), which is what lets one
process keep up with >100,000 readings/s; where it learns what it stored is the tail of its
newest files (writer.resume), together with what it still missed, which it saves in
`progress.json` before each write of rows (sink.progress): the tail alone cannot tell a
session's start from a hole still being filled. A disk that refuses a write (full,
permissions) never stops the loop: rows wait in memory up to a bound and the write is retried
with backoff; readings past the bound are dropped, counted and named in gaps.csv (reason
`buffer_full`). With retention on (writer.retention) the oldest closed file is deleted first,
and the write retried, before a full disk makes rows wait or readings drop.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from powmon.base.storage import SEQ, FileNaming, csv_lines, find_current
from powmon.common.backoff import backoff
from powmon.common.curvezmq import Curve
from powmon.common.errors import PowmonError
from powmon.common.lock import writer_lock
from powmon.common.logs import RateLimiter
from powmon.common.schema.readings import Reading
from powmon.common.settings import Settings
from powmon.sink.api import (
    CoreConfig,
    Key,
    Lost,
    Mark,
    ProgressFile,
    ProgressLedger,
    Sink,
    Stored,
    StreamState,
    serve,
)
from powmon.writer.compress import Compressor
from powmon.writer.energy import EnergyBook, stream_runs
from powmon.writer.resume import (
    cut_torn_row,
    key_of,
    rows_after,
    scan_session,
    streams_of,
    tail_rows,
    worth_resuming,
)
from powmon.writer.retention import Retention
from powmon.writer.rollups import Rollups
from powmon.writer.store import CsvStore

log = logging.getLogger(__name__)

GAP_LOG: Final = "gaps.csv"
PROGRESS_FILE: Final = "progress.json"
RETENTION_CHECK_S: Final = 60.0  # the rules are applied this often, at start and each rotation
_DISK_FULL: Final = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class WriterConfig:
    data_root: Path
    data_file: str
    file_size_limit: int
    flush_interval: float
    sync_write: bool
    backend: str
    frontend: str
    hwm: int
    heartbeat_interval: float
    curve: Curve | None = None
    batch: int = 1000
    flush_chars: int = 1 << 20  # flush early when this much text is buffered
    max_pending_rows: int = 1_000_000  # rows held in memory while the disk refuses writes
    retry_initial: float = 0.5
    retry_max: float = 30.0
    energy_periods: Mapping[str, float] = field(default_factory=dict)  # sensor: POLLING_DELAY
    energy_save_interval: float = 5.0
    compress: str = "none"  # COMPRESS, for a file once it is closed (the settings say gzip)
    data_max_bytes: int | None = None  # DATA_MAX_BYTES: retention by the raw files' total
    data_keep_days: float | None = None  # DATA_KEEP_DAYS: retention by a closed file's age
    rollup_keep_days: float | None = 3650.0  # ROLLUP_KEEP_DAYS: rollup files kept (writer.rollups)

    @classmethod
    def from_settings(cls, settings: Settings) -> WriterConfig:
        return cls(
            data_root=settings.data_root,
            data_file=settings.data_file,
            file_size_limit=settings.file_size_limit,
            flush_interval=settings.flush_interval,
            sync_write=settings.sync_write,
            backend=settings.broker_backend,
            frontend=settings.broker_frontend,
            hwm=settings.hwm,
            heartbeat_interval=settings.heartbeat_interval,
            energy_periods={s.sensor_id: s.polling_delay for s in settings.sensors},
            curve=settings.curve,
            compress=settings.compress,
            data_max_bytes=settings.data_max_bytes,
            data_keep_days=settings.data_keep_days,
            rollup_keep_days=settings.rollup_keep_days,
        )

    def core(self) -> CoreConfig:
        """The writer takes the bus once per FLUSH_INTERVAL (or whenever a batch is full):
        it writes no more often than that, so waking more often would buy nothing."""
        return CoreConfig(
            process="writer", backend=self.backend, frontend=self.frontend, hwm=self.hwm,
            heartbeat_interval=self.heartbeat_interval, gap_log=self.data_root / GAP_LOG,
            fsync=self.sync_write, batch=self.batch, curve=self.curve,
            gather=self.flush_interval,
        )


class CsvSink(Sink):
    """The writer's store: a bounded row buffer in front of the rotating CSV files, whose
    closed files a thread compresses (writer.compress: told by the store at each rotation)."""

    def __init__(self, config: WriterConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self.naming = FileNaming.from_data_file(config.data_file)
        self.compressor = Compressor(config.data_root, self.naming, config.compress,
                                     retry_initial=config.retry_initial,
                                     retry_max=config.retry_max)
        self.retention = Retention(config.data_root, self.naming, max_bytes=config.data_max_bytes,
                                   keep_days=config.data_keep_days, wall=time.time)
        self.files = CsvStore(
            config.data_root, self.naming, config.file_size_limit, fsync=config.sync_write,
            on_closed=self._file_closed,
        )
        self._limiter = RateLimiter()
        self.dropped = 0
        self.flushes = 0
        self.write_errors = 0
        self._retry: Iterator[float] = self._new_backoff()
        self._retry_at = 0.0
        self._next_flush = clock() + config.flush_interval
        self.rollups = Rollups(config.data_root, config.energy_periods,
                               config.rollup_keep_days, fsync=config.sync_write)
        self.energy = EnergyBook(config.data_root, config.energy_periods, self.rollups.energy)
        self._next_energy_save = 0.0  # the first flush saves
        self.progress = ProgressFile(config.data_root / PROGRESS_FILE, fsync=config.sync_write)
        self.ledger = ProgressLedger()
        self._mark = Mark()  # where the files stood when the saved progress was last exact
        self._saved_holes = True  # what the file says may name holes (unknown until saved)
        self._next_retention = clock() + RETENTION_CHECK_S  # the age rule, between rotations
        self._disk_full = False  # the last write failed for want of space

    def _new_backoff(self) -> Iterator[float]:
        return backoff(self.config.retry_initial, self.config.retry_max)

    def stored(self) -> Iterable[StreamState]:
        """The saved progress less the rows stored after it, and the tail's other streams,
        less the sessions complete and over (resume.worth_resuming); energy.json's ended
        sessions are folded into their totals."""
        root, naming = self.config.data_root, self.naming
        self.compressor.start()  # before the store opens a file: writer.compress
        cut_torn_row(root, naming)
        rows = list(tail_rows(root, naming))  # read and parsed once, for energy and streams
        self.energy.load(rows)
        saved = self.progress.load()
        current = find_current(root, naming)
        self._mark = Mark(current[1].name, current[1].stat().st_size) if current else Mark()
        if saved is None:
            streams = self.ledger.resume((), streams_of(rows), {})
        else:
            stored: dict[Key, set[int]] = {}
            for row in itertools.chain(rows, rows_after(root, naming, saved.mark)):
                stored.setdefault(key_of(row), set()).add(int(row[SEQ]))
            streams = self.ledger.resume(saved.streams, streams_of(rows), stored)
        self.energy.fold(self.ledger.open_holes())
        self.rollups.resume(lambda budget: tail_rows(root, naming, budget))
        self.retention.enforce()  # at start: after the tail was read, before any write
        return worth_resuming(streams, rows)  # sessions complete and over are not taken up

    def find(self, sensor_id: str, session: str) -> int | None:
        return scan_session(self.config.data_root, self.naming, sensor_id, session)

    def counters(self) -> dict[str, object]:
        files = self.files
        return {
            **self.retention.counters(),
            "rows": files.rows_written, "files_opened": files.files_opened,
            "current_file": files.current_file, "bytes_in_file": files.bytes_in_file,
            "flushes": self.flushes, "write_errors": self.write_errors,
            "pending": files.pending_rows, "dropped": self.dropped, **self.energy.counters(),
            **self.compressor.counters(),
            **self.rollups.counters(),
        }

    def store(self, readings: Sequence[Reading], progress: Sequence[StreamState]) -> Stored:
        """Buffer the rows; past the memory bound, the newest are dropped and named as lost."""
        room = max(self.config.max_pending_rows - self.files.pending_rows, 0)
        if len(readings) > room and self._disk_full and self.retention.free_one():
            self.flush(self._clock())  # the space of the oldest closed file, before a drop
            room = max(self.config.max_pending_rows - self.files.pending_rows, 0)
        dropped: Sequence[Reading] = ()
        if len(readings) > room:
            dropped = readings[room:]
            readings = readings[:room]
            self.dropped += len(dropped)
            self._limiter.log(
                log, logging.WARNING, "dropped",
                "buffer full (%d rows unwritten): dropped %d readings",
                self.files.pending_rows, len(dropped),
            )
        self.files.add_lines(csv_lines(readings))
        runs = stream_runs(readings)
        self.energy.add(runs)
        self.rollups.add_runs(runs)
        self.ledger.update(progress)
        return Stored(dropped=tuple(dropped))

    def on_lost(self, lost: Sequence[Lost]) -> None:
        self.energy.lost(lost)

    def due_in(self, now: float) -> float:
        """The next flush (or retry) while rows are pending; with none, nothing is due."""
        if not self.files.pending_rows:
            return float("inf")
        if self.files.pending_chars >= self.config.flush_chars:
            return max(0.0, self._retry_at - now)
        return max(0.0, max(self._next_flush, self._retry_at) - now)

    def tick(self, now: float) -> None:
        """Flush when due (time or buffer size) and not backing off."""
        due = now >= self._next_flush or self.files.pending_chars >= self.config.flush_chars
        if due and now >= self._retry_at:
            self._next_flush = now + self.config.flush_interval
            self.flush(now)

    def save_progress(self) -> None:
        """Save what the core says is still missing, widened to all received since the last
        write that reached the disk (sink.progress); raises OSError. Nothing is written while
        no stream has a hole (then there is nothing a kill could make the tail forget), but
        once after the last one closed, so that the file never points far back."""
        streams = self.ledger.pending()
        if streams or self._saved_holes:
            self.progress.save(streams, self._mark)
            self._saved_holes = bool(streams)

    def flush(self, now: float) -> bool:
        """Save what is still missing, then write what is pending (in that order: a kill
        between the two leaves a state that over-states what is missing, never one that
        forgets a hole); on OSError keep the rows, count the error and schedule a retry."""
        files = self.files
        if not files.pending_rows:
            return True
        try:
            self._write_freeing()
        except OSError as err:
            self._disk_full = err.errno in _DISK_FULL
            self.write_errors += 1
            delay = next(self._retry)
            self._retry_at = now + delay
            log.error("cannot write to %s: %s; %d rows kept in memory, retry in %.1fs",
                      self.config.data_root, err, self.files.pending_rows, delay)
            return False
        if self._retry_at:
            log.warning("writing again after %d write errors", self.write_errors)
            self._retry = self._new_backoff()
            self._retry_at = 0.0
        self._disk_full = False
        self.ledger.settled()
        self._mark = Mark(files.current_file, files.bytes_in_file)
        self.flushes += 1
        if now >= self._next_retention:  # rotations apply the rules too (_file_closed)
            self._next_retention = now + RETENTION_CHECK_S
            self.retention.enforce()
        self.rollups.flush()  # of rows now on disk only
        if now >= self._next_energy_save:  # the totals of rows now on disk, never of more
            self._next_energy_save = now + self.config.energy_save_interval
            self.energy.fold(self.ledger.open_holes())  # ended sessions: their totals only
            self.energy.save()
        return True

    def _file_closed(self, path: Path) -> None:
        """A rotation (CsvStore.on_closed): the closed file goes to the compressor's queue,
        and the retention pass runs at once, so that even a flush that fills several files
        never leaves more than DATA_MAX_BYTES plus one file (a file retention deletes before
        its turn is skipped by the compressor)."""
        self.compressor.closed(path)
        self.retention.enforce()

    def _write_freeing(self) -> None:
        """Save the progress and write the rows; on a full disk with retention on, delete the
        oldest closed file and try again, for as long as there is one (the rows written
        before the failure stay written: flush() keeps only the rest pending)."""
        while True:
            try:
                self.save_progress()
                self.files.flush()
            except OSError as err:
                if err.errno not in _DISK_FULL or not self.retention.free_one():
                    raise
                self.write_errors += 1
                log.warning("disk full writing to %s: deleted the oldest closed data file, "
                            "writing again", self.config.data_root)
                continue
            return

    def close(self) -> None:
        """Last flush at shutdown; rows that cannot be written make it an error exit. A
        compression in progress stops at its next chunk (the original kept)."""
        self.compressor.stop()
        try:
            if not self.flush(self._clock()):
                raise PowmonError(
                    f"{self.files.pending_rows} rows could not be written to "
                    f"{self.config.data_root} at shutdown"
                )
            self.energy.save()
            self.rollups.close()
        finally:
            self.files.close()
        log.info("writer stopped rows=%d files_opened=%d", self.files.rows_written,
                 self.files.files_opened)


def run(config: WriterConfig, stop: threading.Event) -> None:
    """Hold the data root's lock for as long as this writer runs (InUseError: exit 2)."""
    with writer_lock(config.data_root):
        _run(config, stop)


def _run(config: WriterConfig, stop: threading.Event) -> None:
    log.info("writer up backend=%s data_root=%s limit=%d flush=%.2fs fsync=%s "
             "retention max_bytes=%s keep_days=%s",
             config.backend, config.data_root, config.file_size_limit,
             config.flush_interval, config.sync_write, config.data_max_bytes,
             config.data_keep_days)
    serve(config.core(), CsvSink(config), stop)
