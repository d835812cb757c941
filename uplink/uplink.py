"""The uplink process: bus -> durable spool -> remote HTTP server, never the other way round.

A sink on the sink core (sink/core.py), which subscribes, resumes, fills gaps from the readers'
replay buffers and drops duplicates. What is the uplink's own: each batch is committed to the
spool in one transaction together with the streams' progress (so a restart knows exactly what
it already has), and the sender thread (sender.py) takes batches from the spool and deletes
them only once the server answered 2xx. The receive loop never touches HTTP, so a slow or dead
server cannot make the uplink fall behind the bus.

On SIGTERM: stop receiving (everything received is already committed), tell the sender to
stop, wait for its in-flight request at most UPLINK_TIMEOUT (+ a margin), then exit 0. A
request still hanging then is abandoned with its batch still spooled: it is sent on the next
start, and a server that deduplicates by (sensor_id, session, seq) sees it at most twice.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Final

import urllib3

from powmon.common.lock import spool_lock
from powmon.common.schema import Reading
from powmon.sink.core import Sink, Stored, serve
from powmon.sink.tracker import StreamState
from powmon.uplink.config import UplinkConfig
from powmon.uplink.sender import Sender, Stats
from powmon.uplink.spool import Spool

log = logging.getLogger(__name__)

JOIN_MARGIN_S: Final = 1.0


class SpoolSink(Sink):
    """The uplink's store: the spool, and a poke to the sender for each committed batch."""

    def __init__(self, config: UplinkConfig, spool: Spool, sender: Sender, stats: Stats):
        self.config = config
        self.spool = spool
        self.sender = sender
        self.stats = stats
        stats.spool_depth = spool.depth()

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
            self.sender.poke()
        return Stored(duplicates=result.duplicates)

    def tick(self, now: float) -> None:
        self.sender.check()
        self.stats.spool_depth = self.spool.depth()

    def counters(self) -> dict[str, object]:
        s = self.stats
        return {
            "spool_depth": s.spool_depth, "sent": s.sent, "batches_ok": s.batches_ok,
            "retries": s.retries, "dead_lettered": s.dead_lettered,
            "dropped_over_cap": s.dropped_over_cap, "last_success_ns": s.last_success_ns,
            "last_error": s.last_error,
        }

    def close(self) -> None:
        """Stop the sender (its in-flight request at most UPLINK_TIMEOUT), then the spool."""
        try:
            if not self.sender.shutdown(self.config.timeout + JOIN_MARGIN_S):
                log.warning("a request to %s is still in flight; its batch stays spooled and "
                            "is sent on the next start", self.config.where)
            self.stats.spool_depth = self.spool.depth()
            _summary(self.stats)
        finally:
            self.spool.close()


def _summary(stats: Stats) -> None:
    last = (
        time.strftime("%H:%M:%SZ", time.gmtime(stats.last_success_ns / 1e9))
        if stats.last_success_ns
        else "never"
    )
    log.info("uplink depth=%d sent=%d batches=%d retries=%d dead=%d dropped=%d last_ok=%s",
             stats.spool_depth, stats.sent, stats.batches_ok, stats.retries,
             stats.dead_lettered, stats.dropped_over_cap, last)


def run(config: UplinkConfig, stop: threading.Event) -> None:
    """Hold the spool's lock for as long as this uplink runs (InUseError: exit 2)."""
    with spool_lock(config.spool_path):
        _run(config, stop)


def _run(config: UplinkConfig, stop: threading.Event) -> None:
    if config.verify_tls is False:
        # Said once, at start (config.py); not once per request.
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
    stats = Stats()
    spool = Spool(config.spool_path, config.spool_max)
    sender = Sender(config, stats, threading.Event(), threading.Event())
    sink = SpoolSink(config, spool, sender, stats)
    log.info("uplink up backend=%s server=%s format=%s spool=%s depth=%d",
             config.broker_backend, config.where, config.format, config.spool_path,
             stats.spool_depth)
    sender.start()
    serve(config.core(), sink, stop)
