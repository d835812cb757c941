"""What an output is: encode a batch, deliver it, classify the answer; the core does the rest.

Telegraf's split: an output implements Write(); the agent batches, retries and counts. Here
an output (every kind is named in registry.py: the HTTP formats in http_output.py and
InfluxDB in influx.py, both on http_output.py's HTTP transport; MQTT in mqtt.py) turns spooled
rows into requests (`encode`), delivers one request and says what happened (`send` -> Answer), and
the core (worker.Worker) does everything else once for all of them: batching from the spool,
the output's position, retries with capped backoff, Retry-After, long waits while refused,
dead letters, splitting, counters and logs.

An Answer names rows, never ids alone, where rows must go again, so that the core can
re-encode them (a split half, the lines a partial write did not refuse, what a dropped MQTT
connection left unacknowledged).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from powmon.common.schema.readings import Reading
from powmon.common.schema.status import Status
from powmon.uplink.spool import Spooled

R = TypeVar("R")


class Wait(enum.Enum):
    NONE = "none"  # go on at once (done, dead, split, partial)
    RETRY = "retry"  # a passing failure: capped exponential backoff (and Retry-After)
    REFUSED = "refused"  # credentials or address refused (401/403/404, MQTT not authorised)


@dataclass(frozen=True, slots=True)
class Dead:
    """Rows the receiver will never take, with its status (if any) and why."""

    ids: tuple[int, ...]
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Answer:
    """What one delivery attempt came to. Every row of the request is in exactly one of done,
    dead or again."""

    done: tuple[int, ...] = ()
    dead: tuple[Dead, ...] = ()
    again: tuple[tuple[Spooled, ...], ...] = ()
    wait: Wait = Wait.NONE
    detail: str = ""
    retry_after: float | None = None

    @classmethod
    def ok(cls, rows: Sequence[Spooled], detail: str = "") -> Answer:
        return cls(done=ids(rows), detail=detail)

    @classmethod
    def retry(cls, rows: Sequence[Spooled], detail: str, after: float | None = None) -> Answer:
        return cls(again=(tuple(rows),), wait=Wait.RETRY, detail=detail, retry_after=after)

    @classmethod
    def refused(cls, rows: Sequence[Spooled], detail: str) -> Answer:
        return cls(again=(tuple(rows),), wait=Wait.REFUSED, detail=detail)

    @classmethod
    def dead_all(cls, rows: Sequence[Spooled], status: int | None, detail: str) -> Answer:
        return cls(dead=(Dead(ids(rows), status, detail),), detail=detail)

    @classmethod
    def split(cls, rows: Sequence[Spooled], status: int | None, detail: str) -> Answer:
        """Send in two halves (413, a partial write that names no line); one row left alone
        is dead-lettered: halving always ends."""
        if len(rows) <= 1:
            return cls.dead_all(rows, status, detail)
        half = len(rows) // 2
        return cls(again=(tuple(rows[:half]), tuple(rows[half:])), detail=detail)


def ids(rows: Sequence[Spooled]) -> tuple[int, ...]:
    return tuple(row.id for row in rows)


@dataclass(frozen=True, slots=True)
class Encoded(Generic[R]):
    """The requests that deliver a batch, and the rows the output cannot express at all."""

    requests: list[R]
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (row id, why)


class Output(Generic[R]):
    """Base of every output: exactly what its Worker (worker.py) uses, and nothing else.

    The Worker reads the attributes and calls the methods, all on the output's own thread
    except `interrupt`:

    - `name`: the output's position in the spool, `output_<name>` in the heartbeat, its log
      lines and its dead letters' `output`; `where`: the receiver as logs may show it.
    - `batch_size`, `batch_wait`: at most this many rows per `encode`, and how long the oldest
      may wait for a batch to fill; `backoff_max`: the cap of its retry delays.
    - `open()` once before the first batch, `close()` once at the end.
    - `encode(rows)` -> the requests that deliver them, and the rows the receiver's format
      cannot carry at all (dead-lettered); `send(request)` -> what the receiver made of it.
    - `idle()` a few times a second while nothing is pending.
    - `interrupt()` from the uplink's main thread at shutdown.

    Batching, positions, retries and backoff, Retry-After, long waits while refused, splitting,
    dead letters, counters and their log lines are the Worker's, once for every output. An
    output that also watches the bus (MQTT's Home Assistant state) adds BusWatcher.
    """

    name: str = "output"
    where: str = ""
    batch_size: int = 500
    batch_wait: float = 1.0
    backoff_max: float = 60.0

    def open(self) -> None:
        """Called once on the output's thread before the first batch."""

    def close(self) -> None:
        """Called once on the output's thread at the end."""

    def idle(self) -> Answer | None:
        """Nothing pending (MQTT keeps its connection and Home Assistant's state up). None:
        nothing to report; an Answer without rows: a refusal (Wait.REFUSED, reported and waited
        out like one from send), or Wait.NONE when the receiver took the output back."""
        return None

    def encode(self, rows: Sequence[Spooled]) -> Encoded[R]:
        raise NotImplementedError

    def send(self, request: R) -> Answer:
        raise NotImplementedError

    def interrupt(self) -> None:
        """Make a send() in progress return soon (shutdown); rows not acked stay spooled."""


class BusWatcher:
    """What an output adds to see the bus besides the spool: called from the uplink's receive
    loop (outputs.Outputs), never by the Worker, so neither may block."""

    def on_readings(self, readings: Sequence[Reading]) -> None:
        """The readings just committed to the spool (for latest-value state messages)."""

    def on_status(self, status: Status) -> None:
        """A heartbeat on one of the status topics the output's kind asks for (registry.py)."""
