"""The sink core: what the writer and the uplink do alike, written once.

Telegraf's split: an output implements `Write()`; the agent subscribes, batches, retries and
counts. Here a `Sink` supplies only what is its own, where a batch is stored (`store`) and
what it already holds (`stored`, `find`); the core does the rest for every sink alike:

- subscribes to readings and reader heartbeats on the broker's backend;
- resumes each stream from what the sink holds, so a restart sees what it missed as a gap;
- sorts each batch (next, gap, late fill, duplicate) and drops what is already stored;
- asks the readers' replay buffers for every hole (common.replay, sink.filler), and stores
  what they send back flagged `replayed`;
- names every range that can no longer be had in the sink's loss log (sink.lost);
- runs the loop: sleep until a message, a replay reply, a deadline it computed or a stop (no
  fixed tick: a sink at rest wakes once per heartbeat), let readings gather for GATHER after a
  partial batch (one wake-up per 100 ms for all readers together instead of one per message),
  never wait past the sink's own deadline (the writer's next flush), and drain what already
  arrived before stopping;
- publishes the heartbeat: the core's counters and the sink's.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq

from powmon.common.curve import Curve
from powmon.common.errors import SchemaError
from powmon.common.lifecycle import wake_fd
from powmon.common.logs import RateLimiter
from powmon.common.replay import ReplayClient
from powmon.common.schema.envelope import READING_PREFIX, STATUS_PREFIX
from powmon.common.schema.readings import Reading, ReadingBatch, decode_batch
from powmon.common.schema.status import STATE_STOPPED, Status, decode_status
from powmon.common.transport import Heartbeat, close_all, pub_socket, recv_rest, sub_socket
from powmon.sink.filler import GapFiller, Lost, device_dropped
from powmon.sink.lost import LossLog
from powmon.sink.progress import union
from powmon.sink.tracker import REASON_OVERFLOW, GapRange, GapTracker, Key, StreamState

log = logging.getLogger(__name__)

READER_STATUS: Final = STATUS_PREFIX + b"reader/"
SUPERVISOR_STATUS: Final = STATUS_PREFIX + b"supervisor/"  # which readers ended (ReaderEnd)
POLL_MAX: Final = 0.2  # the longest sleep when the stop request cannot wake the poll
GATHER: Final = 0.1  # after a partial batch, let readings gather this long (at most)
STOP_DRAIN_SECONDS: Final = 5.0  # below powmon run's stop grace (10 s), which then kills
DRAIN_QUIET_MS: Final = 50
MAX_LOOKUPS: Final = 64  # searches of the store for sessions `stored()` did not show, per start
NOBLOCK: Final = int(zmq.NOBLOCK)
RCVMORE: Final = int(zmq.RCVMORE)


@dataclass(frozen=True, slots=True)
class Stored:
    """What became of a batch beyond "stored": readings the store found it already had, and
    readings it could not keep (the core names those as lost, with `reason`)."""

    duplicates: int = 0
    dropped: tuple[Reading, ...] = ()
    reason: str = REASON_OVERFLOW


class Sink(abc.ABC):
    """Where readings go. The core calls these from its one loop thread only."""

    @abc.abstractmethod
    def stored(self) -> Iterable[StreamState]:
        """Every stream the sink holds readings of, and how far: read once, at start.

        The `progress` last handed to `store()` and persisted, less what the sink finds it
        stored after it (sink.progress.ProgressLedger.resume does this for file sinks): its
        data alone cannot tell a session's start from a hole still being filled."""

    def find(self, sensor_id: str, session: str) -> int | None:
        """The last stored seq of a session `stored()` did not show, or None if not held.

        Asked only in the first moments after start (the live readers' first heartbeats):
        later, a session never seen is a new one."""
        return None

    @abc.abstractmethod
    def store(self, readings: Sequence[Reading], progress: Sequence[StreamState]) -> Stored:
        """Take a batch (live and replayed readings, none already stored) and the new state of
        the streams it touched. The promise every sink keeps: that state is durable no later
        than the readings that follow it (the spool commits both in one transaction; the
        writer saves it before each write of rows, sink.progress), and `stored()` gives it
        back. Raise PowmonError when storing is impossible."""

    def tick(self, now: float) -> None:
        """Called once per loop turn: flush when due, check helper threads."""
        return None  # nothing to do unless the sink says otherwise

    def due_in(self, now: float) -> float:
        """Seconds until the sink next needs a tick (the loop never sleeps past it); inf: only
        when messages come (and at each heartbeat)."""
        return float("inf")

    def on_lost(self, lost: Sequence[Lost]) -> None:
        """Ranges just given up for good (also written to the loss log)."""
        return None  # nothing to do unless the sink says otherwise

    def on_status(self, status: Status) -> None:
        """A heartbeat on one of the sink's extra status topics (`CoreConfig.status_topics`)."""
        return None  # nothing to do unless the sink says otherwise

    def counters(self) -> Mapping[str, object]:
        return {}

    def close(self) -> None:
        """Last flush at shutdown; raise PowmonError if what it holds cannot be stored."""
        return None  # nothing to do unless the sink says otherwise


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """What the core needs to know; each sink's config builds one."""

    process: str  # heartbeat name: "writer", "uplink"
    backend: str
    frontend: str
    hwm: int
    heartbeat_interval: float
    gap_log: Path
    fsync: bool
    batch: int = 1000
    gather: float = GATHER
    status_topics: tuple[bytes, ...] = ()  # beyond reader heartbeats, e.g. b"status/"
    replay_retries: int = 3
    summary_interval: float = 10.0
    curve: Curve | None = None  # CURVE keys for the bus and the readers' replay sockets

    @property
    def replay_timeout(self) -> float:
        """How long to wait for a reader's answer before asking again."""
        return max(2.0, 3 * self.heartbeat_interval)

    @property
    def replay_grace(self) -> float:
        """How long to wait for a heartbeat that says where to ask, then and after start."""
        return max(5.0, 5 * self.heartbeat_interval)


class SinkCore:
    """One sink's subscriber state: sequence accounting, gap filling, loss log, counters."""

    def __init__(
        self, config: CoreConfig, sink: Sink, client: ReplayClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.sink = sink
        self.client = client
        self._clock = clock
        self.tracker = GapTracker(lookup=self._lookup)
        self.filler = GapFiller(
            client.ask if client is not None else _nowhere, self.tracker,
            timeout=config.replay_timeout, retries=config.replay_retries,
            grace=config.replay_grace, clock=clock,
        )
        self.losses = LossLog(config.gap_log, fsync=config.fsync)
        self._limiter = RateLimiter()
        self._lookup_until = clock() + 2 * config.replay_grace
        self._lookups = 0
        self._logged: dict[Key, list[tuple[int, int]]] = {}  # the loss log's ranges, at resume
        self._next_summary = clock() + config.summary_interval
        self.received = 0
        self.bad_messages = 0
        self.duplicates = 0

    def counters(self) -> dict[str, object]:
        t, f = self.tracker, self.filler
        return {
            "received": self.received, "bad_messages": self.bad_messages,
            "duplicates": self.duplicates, "gaps": t.gaps, "missing": t.missing,
            "late": t.late, "replayed": f.replayed, "replay_requests": f.requests,
            "recovering": f.recovering, "lost": f.lost, "lost_ranges": f.lost_ranges,
            "streams": t.streams,
            # Per sensor, every sensor seen (0 until its first): `powmon status` shows these.
            "gaps_by_sensor": dict(t.gaps_by_sensor),
            "lost_by_sensor": {**dict.fromkeys(t.gaps_by_sensor, 0), **f.lost_by_sensor},
            **self.sink.counters(),
        }

    def resume(self) -> None:
        """Continue every stream the sink holds; ask again for holes still open."""
        count = 0
        logged = self._logged = self.losses.logged()  # given up: stay holes, not asked again
        tracker = self.tracker
        for s in self.sink.stored():
            key = (s.sensor_id, s.session)
            given_up = logged.get(key, ())
            # A range given up past the last stored row (a reader gone with the session's
            # tail) moves the stream on: else the supervisor's list of ended readers would
            # open that range again after the restart and it would be named twice.
            last = self._settled(key, s.last_seq)
            above = ((s.last_seq + 1, last + 1),) if last > s.last_seq else ()
            tracker.resume(s.sensor_id, s.session, last, union(s.missing, above), s.floor)
            for lo, hi in given_up:
                tracker.give_up(key, lo, hi)
            if tracker.missing_of(key):
                self.filler.opened(key)
            count += 1
        if count:
            log.info("resuming %d streams", count)

    # ---- one loop turn --------------------------------------------------------------------

    def step(self, sock: zmq.Socket[bytes]) -> int:
        """Take what is queued (up to a batch), fill holes, store it all at once; return how
        many messages were taken."""
        messages = self.take(sock)
        batch = self._admit(messages)
        batch += self._recovered()
        self._store(batch)
        now = self._clock()
        self.sink.tick(now)
        if now >= self._next_summary:
            self._next_summary = now + self.config.summary_interval
            log.info("summary %s", " ".join(f"{k}={v}" for k, v in self.counters().items()))
        return len(messages)

    def handle(self, messages: Iterable[Sequence[bytes]]) -> None:
        """Decode, account for and store messages already taken off the bus."""
        self._store(self._admit(messages))

    def recover(self) -> None:
        """Store what readers replayed; ask for what is due; log what is lost for good."""
        self._store(self._recovered())

    def take(self, sock: zmq.Socket[bytes]) -> list[Sequence[bytes]]:
        """Up to a batch of messages that are already queued, without blocking.

        copy=True: for ~100-byte messages bytes beat zmq.Frame, and msgpack wants bytes.
        recv() per frame and RCVMORE instead of recv_multipart: cheaper per message
        (benchmarks/README.md); a message of any other frame count is still taken whole (and
        refused).
        """
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
        return messages

    def _admit(self, messages: Iterable[Sequence[bytes]]) -> list[Reading]:
        """Decode and sort a batch in arrival order: a reader's heartbeat counts only the
        readings before it, so the readings before a heartbeat are sorted before it is read."""
        keep: list[Reading] = []
        readings: list[Reading] = []
        losses: list[ReadingBatch] = []  # messages that name device samples lost
        for frames in messages:
            if frames[0].startswith(STATUS_PREFIX):
                if readings or losses:
                    keep += self._sort(readings, losses)
                    readings, losses = [], []
                self._status(frames)
                continue
            try:
                batch = decode_batch(frames)
            except SchemaError as err:
                self._bad(err)
                continue
            readings += batch.readings
            if batch.dropped:
                losses.append(batch)
        if readings or losses:
            keep += self._sort(readings, losses)
        return keep

    def _sort(self, readings: list[Reading], losses: list[ReadingBatch]) -> list[Reading]:
        self.received += len(readings)
        keep, opened = self.tracker.admit(readings)
        self.duplicates += len(readings) - len(keep)
        for gap in opened:
            self._gap(gap)
        if losses:
            self._device_losses(losses, keep)
        return keep

    def _device_losses(self, losses: list[ReadingBatch], keep: list[Reading]) -> None:
        """Device samples a message names as lost go to the loss log, once: with the first
        reading after them when it is new here (not a duplicate), or alone."""
        kept = {id(r) for r in keep}
        for batch in losses:
            if not batch.readings or id(batch.readings[0]) in kept:
                self.filler.report(
                    device_dropped(batch.sensor_id, batch.session, batch.seq, batch.dropped)
                )

    def _status(self, frames: Sequence[bytes]) -> None:
        try:
            status = decode_status(frames)
        except SchemaError as err:
            self._bad(err)
            return
        if status.process == "reader":
            if self.client is not None:
                self.client.learn(status)
            self.filler.heartbeat(status)
        for end in status.gone:
            if self.tracker.knows(end.sensor_id, end.session) or self._may_look():
                self.filler.ended(end)
        self.sink.on_status(status)

    def _recovered(self) -> list[Reading]:
        out: list[Reading] = []
        if self.client is not None:
            for reply in self.client.replies():
                out += self.filler.on_reply(reply)
        self.filler.tick()
        lost = self.filler.take_lost()
        for gap in lost:
            self._limiter.log(
                log, logging.WARNING, f"lost/{gap.sensor_id}",
                "lost sensor=%s session=%s seq=%d..%d count=%d reason=%s",
                gap.sensor_id, gap.session, gap.first, gap.last, gap.count, gap.reason,
            )
        if lost:
            self.sink.on_lost(lost)
        if lost or self.losses.unlogged:
            self.losses.add(lost)
        return out

    def _store(self, readings: list[Reading]) -> None:
        changed = self.filler.changed
        changed.update((r[0], r[1]) for r in readings)
        state = self.tracker.state
        progress = [state(*key) for key in changed if self.tracker.knows(*key)]
        changed.clear()
        if readings or progress:
            stored = self.sink.store(readings, progress)
            self.duplicates += stored.duplicates
            for lost in lost_ranges(stored.dropped, stored.reason):
                self.filler.report(lost)

    def _may_look(self) -> bool:
        """Whether a session never seen may be one the store holds: only in the first moments
        after start (the supervisor's list of ended readers, the live readers' first
        heartbeats), within the search budget. Later, a session never seen is a new one."""
        return self._clock() <= self._lookup_until and self._lookups < MAX_LOOKUPS

    def _lookup(self, sensor_id: str, session: str) -> tuple[int, int] | None:
        if not self._may_look():
            return None
        self._lookups += 1
        found = self.sink.find(sensor_id, session)
        # What the loss log already named past the last stored row counts as settled, as in
        # resume(): a session found only by this search is not named twice.
        key = (sensor_id, session)
        if found is None and key not in self._logged:
            return None
        last = self._settled(key, -1 if found is None else found)
        return (last, last + 1)

    def _settled(self, key: Key, last: int) -> int:
        """The last stored seq, moved on past what the loss log named above it (gone for
        good: a reader's end repeated after a restart must not open it again)."""
        return max([last, *(hi - 1 for _, hi in self._logged.get(key, ()))])

    def _gap(self, gap: GapRange) -> None:
        self._limiter.log(
            log, logging.WARNING, f"gap/{gap.sensor_id}",
            "gap sensor=%s session=%s missing=%d seq=%d..%d",
            gap.sensor_id, gap.session, gap.count, gap.first, gap.last,
        )
        self.filler.opened((gap.sensor_id, gap.session))

    def _bad(self, err: SchemaError) -> None:
        self.bad_messages += 1
        self._limiter.log(log, logging.WARNING, "bad-message", "dropped a bad message: %s", err)

    # ---- the loop ---------------------------------------------------------------------------

    def loop(self, sub: zmq.Socket[bytes], beat: Heartbeat, stop: threading.Event) -> None:
        """Sleep until a message, a reply, a deadline or a stop; then take the bus in batches.

        The deadlines are computed, never a fixed tick: the sink's own (the writer's next
        flush, only while rows are pending), the heartbeat, the gap filler's (a request's
        timeout, a stopped reader's grace) and the summary line. Replay replies and the stop
        request (common.lifecycle.Stop) are in the same poll as the bus, so a sink at rest
        wakes once per heartbeat. After a partial batch it lets readings gather for
        `CoreConfig.gather` (readers publish every PUBLISH_INTERVAL: a message per reader per
        wake-up instead of one per arrival); after a full batch it goes on at once.
        """
        batch, gather = self.config.batch, self.config.gather
        waker = _Waker(sub, stop, self.client)
        got = 0
        while not stop.is_set():
            wait = self._due(beat)
            if 0 < got < batch:
                stop.wait(min(gather, wait))
            elif got < batch:  # a full batch means more is queued: skip the wait
                waker.wait(wait)
            got = self.step(sub)
            beat.beat()

    def _due(self, beat: Heartbeat) -> float:
        """Seconds until the soonest deadline of the sink, the heartbeat, the filler and the
        summary."""
        now = self._clock()
        return max(0.0, min(self.sink.due_in(now), beat.due_in(now), self.filler.due_in(now),
                            self._next_summary - now))

    def drain(self, sub: zmq.Socket[bytes]) -> None:
        """Take what already arrived before stopping, until the bus goes quiet (the readers,
        stopped first, have sent their last heartbeats) or a deadline against one that never
        does; then name what stopped readers still owed (their replay buffers are gone)."""
        deadline = time.monotonic() + STOP_DRAIN_SECONDS
        while time.monotonic() < deadline:
            if self.step(sub) < self.config.batch and not sub.poll(DRAIN_QUIET_MS, zmq.POLLIN):
                break
        self.filler.finish()
        self.recover()
        for key, count in self._limiter.held().items():
            log.warning("%d more %s warnings were suppressed since the last one", count, key)


class _Waker:
    """The core's one poll: the bus, the replay replies, and the stop request."""

    def __init__(self, sub: zmq.Socket[bytes], stop: threading.Event,
                 client: ReplayClient | None) -> None:
        self._poller = zmq.Poller()
        self._poller.register(sub, zmq.POLLIN)
        self._stop_fd = wake_fd(stop)
        if self._stop_fd is not None:
            self._poller.register(self._stop_fd, zmq.POLLIN)
        self._client = client
        self._replies: set[zmq.Socket[bytes]] = set()

    def wait(self, seconds: float) -> None:
        if self._client is not None:
            socks = set(self._client.sockets())
            for sock in self._replies - socks:
                self._poller.unregister(sock)
            for sock in socks - self._replies:
                self._poller.register(sock, zmq.POLLIN)
            self._replies = socks
        if self._stop_fd is None:  # a plain Event cannot wake the poll: look often enough
            seconds = min(seconds, POLL_MAX)
        self._poller.poll(int(1000 * seconds) if seconds > 0 else 0)


def lost_ranges(readings: Iterable[Reading], reason: str) -> list[Lost]:
    """Readings that will never be stored, as ranges of consecutive seqs per stream."""
    ranges: list[Lost] = []
    for r in sorted(readings, key=lambda r: (r.sensor_id, r.session, r.seq)):
        last = ranges[-1] if ranges else None
        if last is not None and last.key == (r.sensor_id, r.session) and last.last + 1 == r.seq:
            ranges[-1] = Lost(r.sensor_id, r.session, last.first, r.seq, reason)
        else:
            ranges.append(Lost(r.sensor_id, r.session, r.seq, r.seq, reason))
    return ranges


def _nowhere(sensor_id: str, session: str, first: int, last: int) -> bool:
    """The `ask` of a core without a replay client: nobody to ask, ranges are lost."""
    return False


def serve(config: CoreConfig, sink: Sink, stop: threading.Event) -> None:
    """Run one sink on the bus until `stop`; sockets live only inside this call."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    client = ReplayClient(ctx, curve=config.curve)
    core = SinkCore(config, sink, client)
    sub: zmq.Socket[bytes] | None = None
    pub: zmq.Socket[bytes] | None = None
    beat: Heartbeat | None = None
    try:
        core.resume()
        topics = [READING_PREFIX, READER_STATUS, SUPERVISOR_STATUS, *config.status_topics]
        sub = sub_socket(ctx, config.backend, topics, config.hwm, curve=config.curve)
        pub = pub_socket(ctx, config.frontend, config.hwm, curve=config.curve)
        beat = Heartbeat(pub, config.process, config.process, config.heartbeat_interval,
                         core.counters)
        core.loop(sub, beat, stop)
        core.drain(sub)
    finally:
        close_all(sub)
        client.close()  # stop receiving first: every batch taken is already stored
        try:
            sink.close()  # the last flush, also after a crash: keep what can be kept
        finally:
            if beat is not None:
                beat.beat(STATE_STOPPED, force=True)
            close_all(pub)
            ctx.term()
