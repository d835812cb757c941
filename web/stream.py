"""What the page is sent: readings bucketed per sensor, and bounded queues per client.

Readings can come at hundreds per second per sensor; a browser needs a few redraws a second.
So the server averages watts per sensor into short buckets (BUCKET_S) and keeps the last
HISTORY_S of them in a ring, from which a page that opens shows the last minutes at once.
Each client has its own bounded queue of encoded events: when it is full the oldest event is
dropped and counted, so a stalled browser costs a fixed amount of memory and never holds back
the bus, the other clients, or the pipeline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from sse_starlette import ServerSentEvent

BUCKET_S: Final = 0.25  # 4 points per sensor per second, whatever the reading rate
HISTORY_S: Final = 900  # the page's longest window: 15 minutes
CLOSE_AFTER_S: Final = 2 * BUCKET_S  # a bucket is complete this long after its first reading
CLOCK_JUMP_S: Final = 10.0  # a reading this far behind the open bucket: the clock went back
QUEUE_EVENTS: Final = 1024  # per client; the events themselves are shared between clients

Point = tuple[int, float, float, float, float, int]  # t_ms, mean, min, max, last, n


@dataclass(slots=True)
class _Bucket:
    slot: int  # ts_ns // bucket length
    opened: float  # local monotonic time of its first reading
    n: int
    total: float
    lo: float
    hi: float
    last: float

    def point(self, bucket_ms: int) -> Point:
        return (self.slot * bucket_ms, round(self.total / self.n, 3), round(self.lo, 3),
                round(self.hi, 3), round(self.last, 3), self.n)


class Downsampler:
    """Per-sensor buckets of watts: min, max, mean and last of each BUCKET_S, by reading time.

    A bucket is closed by a reading of a later bucket or, for a sensor that fell silent, by
    local time (CLOSE_AFTER_S after its first reading), so a skewed clock on the reader's
    host delays nothing. A reading older than the open bucket (a replay) is left out of the
    chart; it is in the CSV files all the same.
    """

    def __init__(self, bucket_s: float = BUCKET_S, history_s: float = HISTORY_S,
                 max_sensors: int = 256) -> None:
        self._slot_ns = int(bucket_s * 1e9)
        self._bucket_ms = int(bucket_s * 1000)
        self._keep = int(history_s / bucket_s)
        self._max = max_sensors
        self._open: dict[str, _Bucket] = {}
        self._closed: dict[str, list[Point]] = {}
        self.history: dict[str, deque[Point]] = {}
        self.late = 0

    @property
    def open(self) -> int:
        """Buckets still open (a tick will close them)."""
        return len(self._open)

    def add(self, sensor: str, ts_ns: int, watts: float, now: float) -> None:
        slot = ts_ns // self._slot_ns
        b = self._open.get(sensor)
        if b is not None and slot == b.slot:
            b.n += 1
            b.total += watts
            b.lo, b.hi, b.last = min(b.lo, watts), max(b.hi, watts), watts
            return
        if b is not None and slot < b.slot and (b.slot - slot) * self._slot_ns < CLOCK_JUMP_S * 1e9:
            self.late += 1
            return
        if b is None and sensor not in self.history and len(self.history) >= self._max:
            return  # sensor ids come off the bus: bounded
        if b is not None:
            self._close(sensor, b)
        self._open[sensor] = _Bucket(slot, now, 1, watts, watts, watts, watts)

    def _close(self, sensor: str, b: _Bucket) -> None:
        point = b.point(self._bucket_ms)
        self._closed.setdefault(sensor, []).append(point)
        ring = self.history.get(sensor)
        if ring is None:
            ring = self.history[sensor] = deque(maxlen=self._keep)
        ring.append(point)

    def take(self, now: float) -> dict[str, list[Point]]:
        """Buckets completed since the last call, per sensor (the `points` event)."""
        for sensor, b in list(self._open.items()):
            if now - b.opened >= CLOSE_AFTER_S:
                del self._open[sensor]
                self._close(sensor, b)
        closed, self._closed = self._closed, {}
        return closed

    def snapshot(self) -> dict[str, list[Point]]:
        return {sensor: list(ring) for sensor, ring in self.history.items()}


def sse(event: str, data: object) -> bytes:
    """One server-sent event, encoded once and shared by every client's queue."""
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":")), event=event).encode()


_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Client:
    """One connected event-stream client: a bounded queue, drop oldest, counted."""

    peer: str
    readings: bool  # wants every reading as well (programs), not only the chart's points
    maxlen: int = QUEUE_EVENTS
    ident: int = field(default_factory=lambda: next(_ids))
    dropped: int = 0
    sent: int = 0
    closed: bool = False
    _queue: deque[bytes] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def put(self, event: bytes) -> bool:
        """Queue an event; False when the oldest one had to go to make room."""
        full = len(self._queue) >= self.maxlen
        if full:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._ready.set()
        return not full

    async def get(self) -> bytes | None:
        """The next event; None once closed (the server is stopping)."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        self.sent += 1
        return self._queue.popleft()

    def close(self) -> None:
        self.closed = True
        self._ready.set()
