"""The uplink process: bus -> durable spool -> outputs (HTTP, InfluxDB, MQTT), never back.

A sink on the sink core (sink/api.py), which subscribes, resumes, fills gaps from the readers'
replay buffers and drops duplicates. What is the uplink's own: each batch is committed to the
spool in one transaction together with the streams' progress (so a restart knows exactly what
it already has); each output (outputs.py, built from registry.py's table) has a thread of
its own that takes batches from the spool at its own position and marks them done only once
its receiver acknowledged them (2xx, PUBACK). The receive loop never touches the network, so
a slow or dead server cannot make the uplink fall behind the bus, and one output down never
holds back another.

On SIGTERM: stop receiving (everything received is already committed), tell the outputs to
stop, wait for their in-flight requests at most their timeout (+ a margin), then exit 0. A
request still hanging then is abandoned with its batch still spooled: it is sent on the next
start, and a receiver that deduplicates by (sensor_id, session, seq) sees it at most twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from powmon.common.lock import spool_lock
from powmon.common.schema.readings import Reading
from powmon.common.schema.status import Status
from powmon.sink.api import REASON_SPOOL_FULL, Sink, Stored, StreamState, serve
from powmon.uplink.config import UplinkConfig
from powmon.uplink.outputs import Outputs
from powmon.uplink.spool import Spool

log = logging.getLogger(__name__)

DEPTH_EVERY_S: Final = 0.25  # the spool's depth in the heartbeat is at most this stale


@dataclass
class Stats:
    """The spool's counters, kept by the receive loop (the sink core counts the rest)."""

    dropped_over_cap: int = 0
    spool_depth: int = 0


class SpoolSink(Sink):
    """The uplink's store: the spool, and a poke to the outputs for each committed batch."""

    def __init__(self, spool: Spool, outputs: Outputs, stats: Stats) -> None:
        self.spool = spool
        self.outputs = outputs
        self.stats = stats
        self._next_depth = 0.0

    def stored(self) -> Iterable[StreamState]:
        return self.spool.progress()

    def store(self, readings: Sequence[Reading], progress: Sequence[StreamState]) -> Stored:
        result = self.spool.add(readings, progress=progress)
        if result.dropped:
            self.stats.dropped_over_cap += result.dropped
            log.error("spool full (UPLINK_SPOOL_MAX=%d): dropped the %d oldest readings, "
                      "%d in all", self.spool.max_rows, result.dropped,
                      self.stats.dropped_over_cap)
        if result.inserted:
            self.outputs.poke(result.inserted)
        if readings:
            self.outputs.on_readings(readings)
        return Stored(duplicates=result.duplicates, dropped=result.lost, reason=REASON_SPOOL_FULL)

    def on_status(self, status: Status) -> None:
        self.outputs.on_status(status)

    def tick(self, now: float) -> None:
        self.outputs.check()
        if now >= self._next_depth:  # two queries; the heartbeat shows it, not every turn
            self._next_depth = now + DEPTH_EVERY_S
            self.stats.spool_depth = self.spool.depth()

    def counters(self) -> dict[str, object]:
        # Not spool.depth() here: the last (stopped) heartbeat comes after close().
        return {
            "spool_depth": self.stats.spool_depth, "dropped_over_cap": self.stats.dropped_over_cap,
            **self.outputs.counters(),
        }

    def close(self) -> None:
        """Stop the outputs (their in-flight requests at most their timeout), then the spool."""
        try:
            for name in self.outputs.shutdown():
                log.warning("output %s is still delivering; its batch stays spooled and is sent "
                            "on the next start", name)
            self.stats.spool_depth = self.spool.depth()
            log.info("uplink depth=%d dropped=%d", self.stats.spool_depth,
                     self.stats.dropped_over_cap)
            self.outputs.summary()
        finally:
            self.spool.close()


def run(config: UplinkConfig, stop: threading.Event) -> None:
    """Hold the spool's lock for as long as this uplink runs (InUseError: exit 2)."""
    with spool_lock(config.spool_path):
        _run(config, stop)


def _run(config: UplinkConfig, stop: threading.Event) -> None:
    stats = Stats()
    spool = Spool(config.spool_path, config.spool_max)
    outputs = Outputs(config)
    sink = SpoolSink(spool, outputs, stats)
    outputs.start(spool)
    stats.spool_depth = spool.depth()
    log.info("uplink up backend=%s outputs: %s spool=%s depth=%d", config.broker_backend,
             outputs.describe(), config.spool_path, stats.spool_depth)
    serve(config.core(), sink, stop)
