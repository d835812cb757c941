"""What a connected device's loop (polling.py, streaming.py) may use of its reader.

The reader (reader.py) connects, reconnects, heartbeats and stops; a loop only reads one
connected device until it is stopped or lost. It gets this narrow context instead of the
whole reader: the port, where readings go, what is known of the board, the counters it moves,
how to sleep, and the few settings it reads. So the loops do not import the reader (no cycle),
and a test can drive a loop with a context of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from powmon.common.logs import RateLimiter
from powmon.readers.clock import DeviceClock
from powmon.readers.counters import Counters
from powmon.readers.emitter import Emitter
from powmon.readers.handshake import Wanted
from powmon.readers.link import Link
from powmon.readers.schedule import Schedule
from powmon.readers.sleeper import Sleeper


class LimitedLog:
    """The reader's log for trouble that repeats: each kind (`key`) at most once per period,
    shared by the reader and its loops, so a flapping port must not flood the log."""

    def __init__(self, logger: logging.Logger, period: float) -> None:
        self._logger = logger
        self._limiter = RateLimiter(period)

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        self._limiter.log(self._logger, level, key, msg, *args)

    def warn(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)


@dataclass(slots=True)
class Board:
    """What the reader learns of the board behind its port and keeps across reconnects (one
    board per port): its clock's offset and drift, and the stream rate it accepted when it
    named its limit (`err max M`; None until then)."""

    clock: DeviceClock = field(default_factory=DeviceClock)
    stream_hz: int | None = None


@dataclass(frozen=True, slots=True)
class ModeSettings:
    """The settings the loops read (taken from ReaderConfig, which they do not import)."""

    wanted: Wanted
    heartbeat_interval: float
    read_pipeline: int = 1  # requests in flight in request/answer mode
    stream_rate: int | None = None  # `stream HZ` wanted; 0: the device's highest
    channel: int | None = None
    baudrate: int = 115200


@dataclass(frozen=True, slots=True)
class Context:
    """One connected device's loop: its link and where everything it learns goes.

    `chores(now)` is the reader's heartbeat and summary, due every heartbeat interval.
    """

    link: Link
    emitter: Emitter
    board: Board
    counters: Counters
    stop: threading.Event
    sleeper: Sleeper
    schedule: Schedule
    settings: ModeSettings
    limiter: LimitedLog
    chores: Callable[[float], None]
