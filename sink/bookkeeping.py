"""The core's bookkeeping for one sink: where each stream stands, what is asked for, what is lost.

Everything the core knows between two loop turns, and nothing about sockets or time of its
own (sink/loop.py takes the messages off the bus and calls in here):

- resumes each stream from what the sink holds (`Sink.stored`), less what its loss log already
  names, so a restart sees what it missed as a gap and never names a loss twice;
- decodes each batch and sorts it per stream (sink.tracker: next, gap, late fill, duplicate),
  dropping what is already stored;
- asks the readers' replay buffers for every hole (sink.filler, common.replay) and takes what
  they send back;
- names every range that can no longer be had in the sink's loss log (sink.lost);
- hands each batch to `Sink.store` with the new state of the streams it touched;
- keeps the counters the heartbeat carries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final

from powmon.common.errors import SchemaError
from powmon.common.logs import RateLimiter
from powmon.common.replay import ReplayClient
from powmon.common.schema import decode_message
from powmon.common.schema.readings import Reading, ReadingBatch
from powmon.common.schema.status import Status
from powmon.sink.filler import GapFiller, Lost, device_dropped
from powmon.sink.lost import LossLog
from powmon.sink.progress import union
from powmon.sink.tracker import GapRange, GapTracker, Key

if TYPE_CHECKING:  # the interface imports the loop, which imports this: annotations only
    from powmon.sink.api import CoreConfig, Sink

log = logging.getLogger(__name__)

MAX_LOOKUPS: Final = 64  # searches of the store for sessions `stored()` did not show, per start


class SinkCore:
    """One sink's subscriber state: sequence accounting, gap filling, loss log, counters."""

    def __init__(
        self, config: CoreConfig, sink: Sink, client: ReplayClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.sink = sink
        self.client = client
        self.clock = clock
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

    def turn(self, messages: Iterable[Sequence[bytes]]) -> None:
        """One loop turn's worth: the messages taken off the bus and what readers replayed,
        stored in one call."""
        self._store(self._admit(messages) + self._recovered())

    def handle(self, messages: Iterable[Sequence[bytes]]) -> None:
        """Decode, account for and store messages already taken off the bus."""
        self._store(self._admit(messages))

    def recover(self) -> None:
        """Store what readers replayed; ask for what is due; log what is lost for good."""
        self._store(self._recovered())

    def due_in(self, now: float) -> float:
        """Seconds until the gap filler's next deadline (a request's timeout, a grace)."""
        return self.filler.due_in(now)

    def finish(self) -> None:
        """At stop, once the bus is drained: name what stopped readers still owed (their
        replay buffers are gone), and say how many warnings the rate limit held back."""
        self.filler.finish()
        self.recover()
        for key, count in self._limiter.held().items():
            log.warning("%d more %s warnings were suppressed since the last one", count, key)

    def _admit(self, messages: Iterable[Sequence[bytes]]) -> list[Reading]:
        """Decode and sort a batch in arrival order: a reader's heartbeat counts only the
        readings before it, so the readings before a heartbeat are sorted before it is read."""
        keep: list[Reading] = []
        readings: list[Reading] = []
        losses: list[ReadingBatch] = []  # messages that name device samples lost
        for frames in messages:
            try:
                batch = decode_message(frames)
            except SchemaError as err:
                self._bad(err)
                continue
            if isinstance(batch, Status):
                if readings or losses:
                    keep += self._sort(readings, losses)
                    readings, losses = [], []
                self._status(batch)
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

    def _status(self, status: Status) -> None:
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
        return self.clock() <= self._lookup_until and self._lookups < MAX_LOOKUPS

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
