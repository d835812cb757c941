"""The uplink process: bus -> durable spool -> remote HTTP server, never the other way round.

The receive loop (this module, main thread) only decodes readings and commits them to the
spool, one transaction per drained batch of messages; it never touches HTTP, so a slow or dead
server cannot make the uplink fall behind the bus. The sender thread (sender.py) takes batches
from the spool and deletes them only once the server answered 2xx.

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
from typing import Final

import urllib3
import zmq

from powmon.common.errors import SchemaError
from powmon.common.logs import RateLimiter
from powmon.common.schema import READING_PREFIX, Reading, decode_reading
from powmon.common.transport import Heartbeat, close_all, pub_socket, sub_socket
from powmon.uplink.config import UplinkConfig
from powmon.uplink.sender import Sender, Stats
from powmon.uplink.spool import Spool

log = logging.getLogger(__name__)

POLL_MS: Final = 200
DRAIN_MAX: Final = 5000  # messages per spool transaction
JOIN_MARGIN_S: Final = 1.0


def _counters(stats: Stats) -> dict[str, object]:
    return {
        "spool_depth": stats.spool_depth, "received": stats.received, "sent": stats.sent,
        "batches_ok": stats.batches_ok, "retries": stats.retries,
        "dead_lettered": stats.dead_lettered, "dropped_over_cap": stats.dropped_over_cap,
        "duplicates": stats.duplicates, "bad_messages": stats.bad_messages,
        "last_success_ns": stats.last_success_ns, "last_error": stats.last_error,
    }  # fmt: skip


class _Receiver:
    """Drains the SUB socket into the spool; counts what it drops and why."""

    def __init__(self, sub: zmq.Socket[bytes], spool: Spool, stats: Stats) -> None:
        self._sub = sub
        self._spool = spool
        self._stats = stats
        self._limiter = RateLimiter(10.0)

    @property
    def stats(self) -> Stats:
        return self._stats

    def update_depth(self) -> None:
        self._stats.spool_depth = self._spool.depth()

    def drain(self) -> int:
        readings: list[Reading] = []
        while len(readings) < DRAIN_MAX:
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                readings.append(decode_reading(frames))
            except SchemaError as err:
                self._bad(err)
        if not readings:
            return 0
        result = self._spool.add(readings)
        self._stats.received += len(readings)
        self._stats.duplicates += result.duplicates
        if result.dropped:
            self._stats.dropped_over_cap += result.dropped
            log.error("spool full (UPLINK_SPOOL_MAX=%d): dropped the %d oldest readings, "
                      "%d in all", self._spool.max_rows, result.dropped,
                      self._stats.dropped_over_cap)  # fmt: skip
        return result.inserted

    def _bad(self, err: SchemaError) -> None:
        self._stats.bad_messages += 1
        ok, held = self._limiter.allow("bad")
        if ok:
            log.warning("dropped a bad message: %s%s", err,
                        f" ({held} more since the last report)" if held else "")  # fmt: skip


def _summary(stats: Stats) -> None:
    last = (
        time.strftime("%H:%M:%SZ", time.gmtime(stats.last_success_ns / 1e9))
        if stats.last_success_ns
        else "never"
    )
    log.info("uplink depth=%d received=%d sent=%d batches=%d retries=%d dead=%d dropped=%d "
             "bad=%d last_ok=%s", stats.spool_depth, stats.received, stats.sent,
             stats.batches_ok, stats.retries, stats.dead_lettered, stats.dropped_over_cap,
             stats.bad_messages, last)  # fmt: skip


def run(config: UplinkConfig, stop: threading.Event) -> None:
    if config.verify_tls is False:
        # Said once, at start (config.py); not once per request.
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
    stats = Stats()
    spool = Spool(config.spool_path, config.spool_max)
    stats.spool_depth = spool.depth()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = sub_socket(ctx, config.broker_backend, [READING_PREFIX], config.hwm)
    status = pub_socket(ctx, config.broker_frontend, config.hwm)
    status.setsockopt(zmq.LINGER, 0)
    beat = Heartbeat(status, "uplink", "uplink", config.heartbeat_interval,
                     lambda: _counters(stats))  # fmt: skip
    sender = Sender(config, stats, threading.Event(), threading.Event())
    log.info("uplink up backend=%s server=%s format=%s spool=%s depth=%d",
             config.broker_backend, config.where, config.format, config.spool_path,
             stats.spool_depth)  # fmt: skip
    sender.start()
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    try:
        _loop(config, stop, poller, _Receiver(sub, spool, stats), beat, sender)
    finally:
        sub.close()  # stop receiving first; every drained batch is already committed
        if not sender.shutdown(config.timeout + JOIN_MARGIN_S):
            log.warning("a request to %s is still in flight; its batch stays spooled and is "
                        "sent on the next start", config.where)  # fmt: skip
        stats.spool_depth = spool.depth()
        beat.beat("stopping", force=True)
        _summary(stats)
        spool.close()
        close_all(status)
        ctx.term()


def _loop(config: UplinkConfig, stop: threading.Event, poller: zmq.Poller, receiver: _Receiver,
          beat: Heartbeat, sender: Sender) -> None:  # fmt: skip
    next_summary = time.monotonic() + config.summary_interval
    while not stop.is_set():
        if poller.poll(POLL_MS) and receiver.drain():
            sender.poke()
        sender.check()
        receiver.update_depth()
        beat.beat()
        if time.monotonic() >= next_summary:
            next_summary = time.monotonic() + config.summary_interval
            _summary(receiver.stats)
