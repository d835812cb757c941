"""What a sink implements, and all it sees of the core: the one module of sink/ a sink imports.

A sink (the writer, the uplink, any output added later) is where readings end up; the core
(sink/loop.py, sink/bookkeeping.py) does what every sink does alike: subscribe, resume each
stream from what the sink holds, sort batches, ask the readers' replay buffers for holes, name
what is lost for good, and beat the heartbeat. Telegraf's split between the agent and its
outputs: here a sink supplies only what is its own, three things:

- what it stores: `Sink.store`, one batch at a time;
- what it holds at start: `Sink.stored` (and `Sink.find` for a session the start missed);
- what it persists with the readings: the `StreamState` of each stream a batch touched, handed
  to `store()` with the batch, durable no later than the readings after it. A sink whose rows
  go to files keeps it beside them with `ProgressLedger` and `ProgressFile` (sink.progress).

and a `CoreConfig` naming its process, its loss log and its batch size; `serve(config, sink,
stop)` runs it until `stop`. Everything here is either defined here (`Sink`, `Stored`,
`CoreConfig`) or re-exported from the one core module that defines it; the core's modules
import this one for type annotations only, so that `serve` can be re-exported without a cycle.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from powmon.common.curvezmq import Curve
from powmon.common.schema.readings import Reading
from powmon.common.schema.status import Status
from powmon.sink.filler import Lost
from powmon.sink.loop import serve
from powmon.sink.progress import Mark, ProgressFile, ProgressLedger
from powmon.sink.tracker import (
    REASON_BOUND,
    REASON_DEVICE,
    REASON_NO_ENDPOINT,
    REASON_NO_REPLY,
    REASON_OVERFLOW,
    REASON_OVERRUN,
    REASON_RESTARTED,
    REASON_SPOOL_FULL,
    REASON_STOPPED,
    Key,
    StreamState,
)

__all__ = [
    "GATHER", "REASON_BOUND", "REASON_DEVICE", "REASON_NO_ENDPOINT", "REASON_NO_REPLY",
    "REASON_OVERFLOW", "REASON_OVERRUN", "REASON_RESTARTED", "REASON_SPOOL_FULL",
    "REASON_STOPPED", "CoreConfig", "Key", "Lost", "Mark", "ProgressFile", "ProgressLedger",
    "Sink", "Stored", "StreamState", "serve",
]

GATHER: Final = 0.1  # after a partial batch, let readings gather this long (at most)


@dataclass(frozen=True, slots=True)
class Stored:
    """What became of a batch beyond "stored": readings the store found it already had (the
    spool's unique key), and readings it could not keep (the writer's bounded buffer on a
    refusing disk, the uplink's spool cap), which the core names as lost with `reason`."""

    duplicates: int = 0
    dropped: tuple[Reading, ...] = ()
    reason: str = REASON_OVERFLOW


class Sink(abc.ABC):
    """Where readings go. The core calls these from its one loop thread only.

    Two hooks are the sink's job (`stored`, `store`); the others are optional and each exists
    because the writer or the uplink needs it: `find` (the writer: a session older than its
    tail), `tick` and `due_in` (the writer's timed flush, the uplink's checks), `on_lost`
    (the writer's energy totals), `on_status` (the uplink's MQTT output: the writer's
    heartbeats), `counters` (both: the heartbeat) and `close` (both: the last flush).
    """

    @abc.abstractmethod
    def stored(self) -> Iterable[StreamState]:
        """Every stream the sink holds readings of, and how far: read once, at start.

        The `progress` last handed to `store()` and persisted, less what the sink finds it
        stored after it (ProgressLedger.resume does this for file sinks): its data alone
        cannot tell a session's start from a hole still being filled. The core resumes each
        stream from it, so what the sink missed while down is a gap, asked for again."""

    @abc.abstractmethod
    def store(self, readings: Sequence[Reading], progress: Sequence[StreamState]) -> Stored:
        """Take a batch (live and replayed readings, none already stored) and the new state of
        the streams it touched. The promise every sink keeps: that state is durable no later
        than the readings that follow it (the spool commits both in one transaction; the
        writer saves it before each write of rows, ProgressLedger), and `stored()` gives it
        back. Raise PowmonError when storing is impossible."""

    def find(self, sensor_id: str, session: str) -> int | None:
        """The last stored seq of a session `stored()` did not show, or None if not held.

        For a sink whose `stored()` reads only part of what it holds (the writer reads the
        tail of its newest files; this searches further back): without it a reader's session
        older than that part would be taken to start at 0 and stored twice. Asked only in the
        first moments after start (the live readers' first heartbeats): later, a session never
        seen is a new one."""
        return None

    def tick(self, now: float) -> None:
        """Called once per loop turn, after the turn's batch was stored: the writer flushes
        when due (so rows reach the disk on time without a thread of its own), the uplink
        checks its outputs' threads and samples the spool's depth."""
        return None  # nothing to do unless the sink says otherwise

    def due_in(self, now: float) -> float:
        """Seconds until the sink next needs a tick; the loop never sleeps past it (the
        writer's next flush or retry, only while rows are pending); inf: only when messages
        come (and at each heartbeat), which is all a sink without deadlines needs."""
        return float("inf")

    def on_lost(self, lost: Sequence[Lost]) -> None:
        """Ranges just given up for good (also written to the loss log), for a sink that
        waits on holes: the writer's energy integration keeps the readings on either side of
        a hole apart until it is filled, and joins them once it never will be."""
        return None  # nothing to do unless the sink says otherwise

    def on_status(self, status: Status) -> None:
        """A heartbeat on one of the sink's extra status topics (`CoreConfig.status_topics`):
        the uplink's MQTT output publishes the writer's energy totals and health."""
        return None  # nothing to do unless the sink says otherwise

    def counters(self) -> Mapping[str, object]:
        """The sink's own counters, merged into the core's in each heartbeat."""
        return {}

    def close(self) -> None:
        """Last flush at shutdown, also after a crash of the loop (keep what can be kept);
        raise PowmonError if what it holds cannot be stored."""
        return None  # nothing to do unless the sink says otherwise


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """What the core needs to know; each sink's config builds one."""

    process: str  # heartbeat name: "writer", "uplink"
    backend: str
    frontend: str
    hwm: int
    heartbeat_interval: float
    gap_log: Path  # the sink's loss log (sink.lost)
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
