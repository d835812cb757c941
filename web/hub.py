"""The web process's state: what came off the bus, and who gets which event.

The Hub is fed bus messages by the SUB loop and ticked a few times a second; it keeps the
health model (powmon.base.health) and the chart's buckets, and puts encoded events into every
client's bounded queue. No sockets and no clock of its own, so it is tested without a server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from powmon.base.health import Expected, Health
from powmon.base.text import reading_dict
from powmon.common.errors import SchemaError
from powmon.common.logs import RateLimiter
from powmon.common.schema import decode_message
from powmon.common.schema.status import Status
from powmon.web.stream import BUCKET_S, HISTORY_S, Client, Downsampler, sse

log = logging.getLogger(__name__)

STATUS_EVERY_S: Final = 1.0
EVENTS_VERSION: Final = 1  # the `hello` event's `v`: bumped when an event's shape changes
MAX_CLIENTS: Final = 256


class Hub:
    """Bus messages in; the health report, chart points and per-client queues out."""

    def __init__(self, expected: Expected, units: Mapping[str, str] | None = None) -> None:
        self.health = Health(expected)
        self.units = dict(units or {})  # sensor: "W" or "VA" (the chart's axis per sensor)
        self.chart = Downsampler()
        self.clients: set[Client] = set()
        self.readings = 0
        self.bad_messages = 0
        self.dropped_total = 0  # events dropped for slow clients, including gone ones
        self.clients_total = 0
        self.refused = 0
        self._next_status = 0.0
        self._limiter = RateLimiter()

    def on_message(self, frames: Sequence[bytes], now: float) -> None:
        try:
            message = decode_message(frames)
            if isinstance(message, Status):
                self.health.feed(message, now)
            else:
                readings = message.readings
                self.readings += len(readings)
                if readings:  # one sensor's, in seq order: the last is its latest
                    self.health.feed_reading(readings[-1])
                listeners = [c for c in self.clients if c.readings]
                for r in readings:
                    self.chart.add(r.sensor_id, r.ts_ns, r.watts, now)
                    if listeners:
                        self._send(listeners, sse("reading", reading_dict(r)))
        except (SchemaError, IndexError) as err:
            self.bad_messages += 1
            self._limiter.log(log, logging.WARNING, "bad", "dropped a bad message: %s", err)

    def report(self, now: float) -> dict[str, Any]:
        """The health report plus this process's own counters (the `status` event)."""
        report = self.health.to_json(now)
        per_client = [{"client": f"{c.ident} {c.peer}", "dropped": c.dropped, "queued": c.queued}
                      for c in self.clients]
        report["web"] = {**self.counters(), "per_client": per_client}
        return report

    def counters(self) -> dict[str, object]:
        """Flat totals: the web process's heartbeat counters."""
        return {
            "clients": len(self.clients), "clients_total": self.clients_total,
            "refused": self.refused, "readings": self.readings,
            "bad_messages": self.bad_messages, "dropped_events": self.dropped_total,
            "late_points": self.chart.late,
        }

    def tick(self, now: float) -> None:
        """Send the buckets completed since the last tick, and the status once a second."""
        points = self.chart.take(now)
        if points:
            self._broadcast(sse("points", points))
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            self._broadcast(sse("status", self.report(now)))

    def connect(self, peer: str, readings: bool, now: float) -> Client | None:
        """A new event-stream client, with the history and status queued first; None when
        there are already MAX_CLIENTS (each costs a queue)."""
        if len(self.clients) >= MAX_CLIENTS:
            self.refused += 1
            return None
        client = Client(peer, readings)
        hello = {
            "v": EVENTS_VERSION, "bucket_ms": int(BUCKET_S * 1000), "history_s": HISTORY_S,
            "sensors": list(self.health.expected.sensors), "history": self.chart.snapshot(),
            "units": {s: self.units.get(s, "W") for s in self.health.expected.sensors},
        }
        client.put(sse("hello", hello))
        client.put(sse("status", self.report(now)))
        self.clients.add(client)
        self.clients_total += 1
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    def _broadcast(self, event: bytes) -> None:
        self._send(self.clients, event)

    def _send(self, clients: Iterable[Client], event: bytes) -> None:
        for client in clients:
            if not client.put(event):
                self.dropped_total += 1
