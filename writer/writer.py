"""The writer process: readings from the bus into rotating CSV files, the only data file writer.

The loop polls the SUB socket with a short timeout (so a stop is seen within 0.2 s), then drains
up to a batch without blocking; rows are buffered and written once per FLUSH_INTERVAL (or
sooner when the buffer grows), which is what lets one process keep up with >100,000 readings/s.
A disk that refuses a write (full, permissions) never stops the loop: rows wait in memory up to
a bound and the write is retried with backoff; readings past the bound are counted as dropped.

Readings that never arrived (a writer or broker restart, ZeroMQ's slow joiner) are asked for
from the readers' replay buffers (common.replay, common.gaps) and stored late, flagged
`replayed`; a reading already stored is never stored again; what cannot be had any more is
named in gaps.csv (recovery.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq

from powmon.common.backoff import backoff
from powmon.common.errors import PowmonError, SchemaError
from powmon.common.gaps import KEEP, Verdict
from powmon.common.logs import RateLimiter
from powmon.common.replay import ReplayClient
from powmon.common.schema import (
    READING_PREFIX,
    STATUS_PREFIX,
    CsvRow,
    csv_row,
    decode_csv_row,
)
from powmon.common.settings import Settings
from powmon.common.transport import Heartbeat, close_all, pub_socket, recv_rest, sub_socket
from powmon.writer.recovery import Recovery
from powmon.writer.rotation import FileNaming
from powmon.writer.store import CsvStore

log = logging.getLogger(__name__)

POLL_MAX: Final = 0.2
POLL_RECOVERING: Final = 0.01  # replies come on other sockets: look often while waiting
BATCH_WAIT: Final = 0.02  # after a partial batch, let readings gather this long (at most)
STOP_DRAIN_SECONDS: Final = 2.0
READER_STATUS: Final = STATUS_PREFIX + b"reader/"
NOBLOCK: Final = int(zmq.NOBLOCK)
RCVMORE: Final = int(zmq.RCVMORE)


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
    batch: int = 1000
    flush_chars: int = 1 << 20  # flush early when this much text is buffered
    max_pending_rows: int = 1_000_000  # rows held in memory while the disk refuses writes
    retry_initial: float = 0.5
    retry_max: float = 30.0
    summary_interval: float = 10.0
    replay_retries: int = 3

    @property
    def replay_timeout(self) -> float:
        """How long to wait for a reader's answer before asking again."""
        return max(2.0, 3 * self.heartbeat_interval)

    @property
    def replay_grace(self) -> float:
        """How long to wait for a heartbeat that says where to ask, then and after start."""
        return max(5.0, 5 * self.heartbeat_interval)

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
        )


class Writer:
    """The state of the loop: the store, the gap tracker and the counters for the heartbeat."""

    def __init__(
        self, config: WriterConfig, clock: Callable[[], float] = time.monotonic,
        client: ReplayClient | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self._clock = clock
        self.naming = FileNaming.from_data_file(config.data_file)
        self.store = CsvStore(
            config.data_root, self.naming, config.file_size_limit, fsync=config.sync_write
        )
        self.recovery = Recovery(
            config.data_root, self.naming, fsync=config.sync_write,
            timeout=config.replay_timeout, retries=config.replay_retries,
            grace=config.replay_grace, client=client, clock=clock,
        )  # fmt: skip
        self.gaps = self.recovery.tracker
        self.filler = self.recovery.filler
        self._limiter = RateLimiter()
        self.received = 0
        self.bad_messages = 0
        self.dropped = 0
        self.flushes = 0
        self.write_errors = 0
        self.duplicates = 0
        self._retry: Iterator[float] = self._new_backoff()
        self._retry_at = 0.0
        self._next_flush = clock() + config.flush_interval
        self._next_summary = clock() + config.summary_interval

    def _new_backoff(self) -> Iterator[float]:
        return backoff(self.config.retry_initial, self.config.retry_max)

    def resume(self) -> None:
        """Learn from the data files where each stream stopped (and which holes are open)."""
        self.recovery.resume()

    def counters(self) -> dict[str, int | str]:
        store = self.store
        return {
            "rows": store.rows_written, "files_opened": store.files_opened,
            "current_file": store.current_file, "bytes_in_file": store.bytes_in_file,
            "bad_messages": self.bad_messages, "gaps": self.gaps.gaps,
            "missing": self.gaps.missing, "late": self.gaps.late, "flushes": self.flushes,
            "write_errors": self.write_errors, "received": self.received,
            "pending": store.pending_rows, "dropped": self.dropped,
            "duplicates": self.duplicates, "replayed": self.filler.replayed,
            "replay_requests": self.filler.requests, "recovering": self.filler.recovering,
            "lost": self.filler.lost, "lost_ranges": self.filler.lost_ranges,
        }  # fmt: skip

    def receive(self, sock: zmq.Socket[bytes]) -> int:
        """Take up to a batch of messages that are already queued; return how many."""
        # copy=True: for ~100-byte messages bytes beat zmq.Frame (measured about 49k vs 41k
        # readings per CPU-second end to end), and decode_csv_row needs bytes anyway.
        # recv() per frame and RCVMORE instead of recv_multipart: 3.1 against 5.5 us per
        # message; a message of any other frame count is still taken whole (and refused).
        recv, more = sock.recv, sock.getsockopt
        messages: list[Sequence[bytes]] = []
        for _ in range(self.config.batch):
            try:
                topic = recv(NOBLOCK)
            except zmq.Again:
                break
            if not more(RCVMORE):
                messages.append((topic,))
                continue
            payload = recv()  # the frames of a message arrive together: already queued
            if more(RCVMORE):
                messages.append(recv_rest(sock, [topic, payload]))
            else:
                messages.append((topic, payload))
        if messages:
            self.handle(messages)
        return len(messages)

    def handle(self, messages: Iterable[Sequence[bytes]]) -> None:
        """Decode, account and buffer a batch; bad messages are counted and dropped."""
        rows: list[CsvRow] = []
        streams = self.gaps.next_seqs()
        received = 0
        for frames in messages:
            if frames[0].startswith(READER_STATUS):
                self._status(frames)
                continue
            try:
                row = decode_csv_row(frames)
            except SchemaError as err:
                self.bad_messages += 1
                self._warn("bad-message", "dropped a bad message: %s", err)
                continue
            received += 1
            stream = streams.get((row[1], row[2]))
            if stream is not None and stream.next_seq == row[3]:  # the usual case, inlined
                stream.next_seq += 1
            elif not self._unusual(row[1], row[2], row[3]):
                continue
            rows.append(row)
        self.received += received
        self._buffer(rows)

    def _unusual(self, sensor_id: str, session: str, seq: int) -> bool:
        """Account for anything but the next seq; False: do not store (already stored)."""
        verdict = self.gaps.observe(sensor_id, session, seq)
        if verdict is Verdict.GAP:
            self._log_gap()
            self.filler.opened((sensor_id, session))
        elif verdict not in KEEP:
            self.duplicates += 1
            return False
        return True

    def _status(self, frames: Sequence[bytes]) -> None:
        try:
            self.recovery.status(frames)
        except SchemaError as err:
            self.bad_messages += 1
            self._warn("bad-message", "dropped a bad status message: %s", err)

    def recover(self) -> None:
        """Store what readers replayed; ask for what is due; report what is lost for good."""
        replayed = self.recovery.step()
        if replayed:
            self._buffer([csv_row(r) for r in replayed])

    def _buffer(self, rows: Sequence[Sequence[object]]) -> None:
        room = self.config.max_pending_rows - self.store.pending_rows
        if len(rows) > room:
            lost = len(rows) - max(room, 0)
            self.dropped += lost
            self._warn("dropped", "buffer full (%d rows unwritten): dropped %d readings",
                       self.store.pending_rows, lost)  # fmt: skip
            rows = rows[: max(room, 0)]
        self.store.add_rows(rows)

    def _log_gap(self) -> None:
        gap = self.gaps.recent[-1]
        self._warn(
            f"gap/{gap.sensor_id}", "gap sensor=%s session=%s missing=%d seq=%d..%d",
            gap.sensor_id, gap.session, gap.count, gap.first, gap.last,
        )  # fmt: skip

    def tick(self) -> None:
        """Flush when due (time or buffer size) and not backing off; log the periodic summary."""
        now = self._clock()
        store = self.store
        due = now >= self._next_flush or store.pending_chars >= self.config.flush_chars
        if due and now >= self._retry_at:
            self._next_flush = now + self.config.flush_interval
            self.flush(now)
        if now >= self._next_summary:
            self._next_summary = now + self.config.summary_interval
            log.info("summary %s", " ".join(f"{k}={v}" for k, v in self.counters().items()))

    def flush_due_in(self) -> float:
        """Seconds until the next timed flush (0 when due)."""
        return max(0.0, self._next_flush - self._clock())

    def flush(self, now: float) -> bool:
        """Write what is pending; on OSError keep it, count the error and schedule a retry."""
        if not self.store.pending_rows:
            return True
        try:
            self.store.flush()
        except OSError as err:
            self.write_errors += 1
            delay = next(self._retry)
            self._retry_at = now + delay
            log.error("cannot write to %s: %s; %d rows kept in memory, retry in %.1fs",
                      self.config.data_root, err, self.store.pending_rows, delay)  # fmt: skip
            return False
        if self._retry_at:
            log.warning("writing again after %d write errors", self.write_errors)
            self._retry = self._new_backoff()
            self._retry_at = 0.0
        self.flushes += 1
        return True

    def close(self) -> None:
        """Last flush at shutdown; rows that cannot be written make it an error exit."""
        try:
            if not self.flush(self._clock()):
                raise PowmonError(
                    f"{self.store.pending_rows} rows could not be written to "
                    f"{self.config.data_root} at shutdown"
                )
        finally:
            self.store.close()

    def _warn(self, key: str, msg: str, *args: object) -> None:
        allowed, held = self._limiter.allow(key)
        if allowed:
            log.warning(msg + (" (%d similar suppressed)" if held else ""),
                        *args, *((held,) if held else ()))  # fmt: skip


def _loop(writer: Writer, sub: zmq.Socket[bytes], beat: Heartbeat, stop: threading.Event) -> None:
    """Wake on the first message after a quiet spell, then take the bus in batches.

    After a partial batch the loop waits up to BATCH_WAIT (never past the next flush) before
    looking again: at sensor rates that is one wake-up per ~20 ms for all readers together
    instead of one per reading. The wait ends at the next flush, so disk latency is unchanged.
    """
    config = writer.config
    idle_ms = int(1000 * min(POLL_MAX, config.flush_interval, config.heartbeat_interval))
    busy_ms = int(1000 * POLL_RECOVERING)
    got = 0
    while not stop.is_set():
        if 0 < got < config.batch:
            stop.wait(min(BATCH_WAIT, writer.flush_due_in()))
        elif got < config.batch:  # a full batch means more is queued: skip the wait
            sub.poll(busy_ms if writer.filler.recovering else idle_ms, zmq.POLLIN)
        got = writer.receive(sub)
        writer.recover()
        writer.tick()
        beat.beat()


def _drain(writer: Writer, sub: zmq.Socket[bytes]) -> None:
    """Take what already arrived before stopping, bounded in time against a busy bus."""
    deadline = time.monotonic() + STOP_DRAIN_SECONDS
    while writer.receive(sub) == writer.config.batch and time.monotonic() < deadline:
        pass


def run(config: WriterConfig, stop: threading.Event) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    client = ReplayClient(ctx)
    writer = Writer(config, client=client)
    writer.resume()
    sub: zmq.Socket[bytes] | None = None
    status: zmq.Socket[bytes] | None = None
    try:
        sub = sub_socket(ctx, config.backend, [READING_PREFIX, READER_STATUS], config.hwm)
        status = pub_socket(ctx, config.frontend, config.hwm)
        beat = Heartbeat(status, "writer", "writer", config.heartbeat_interval, writer.counters)
        log.info("writer up backend=%s data_root=%s limit=%d flush=%.2fs fsync=%s",
                 config.backend, config.data_root, config.file_size_limit,
                 config.flush_interval, config.sync_write)  # fmt: skip
        _loop(writer, sub, beat, stop)
        _drain(writer, sub)
        try:
            writer.close()
        finally:
            beat.beat("stopped", force=True)
        log.info("writer stopped rows=%d files_opened=%d", writer.store.rows_written,
                 writer.store.files_opened)  # fmt: skip
    finally:
        writer.store.close()
        client.close()
        close_all(sub, status)
        ctx.term()
