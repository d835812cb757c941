"""The uplink process: bus -> durable spool -> outputs (HTTP, InfluxDB, MQTT), never back.

The receive loop (this module, main thread) only decodes readings and commits them to the
spool, one transaction per drained batch of messages; it never touches the network, so a slow
or dead server cannot make the uplink fall behind the bus. Each output (outputs.py) has a
thread of its own that takes batches from the spool at its own position and marks them done
only once its receiver acknowledged them (2xx, PUBACK).

On SIGTERM: stop receiving (everything received is already committed), tell the outputs to
stop, wait for their in-flight requests at most their timeout (+ a margin), then exit 0. A
request still hanging then is abandoned with its batch still spooled: it is sent on the next
start, and a receiver that deduplicates by (sensor_id, session, seq) sees it at most twice.

Readings that never reached the uplink (its own restart, a broker restart, the slow joiner) are
asked for from the readers' replay buffers and spooled late (common.gaps, common.replay); the
spool's `progress` table makes that survive an uplink restart. What cannot be had any more is
counted (`lost`, `lost_ranges`) and logged at WARNING.
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
from powmon.common.gaps import KEEP, GapFiller, GapTracker, Verdict
from powmon.common.logs import RateLimiter
from powmon.common.replay import ReplayClient, nowhere, take_replayed
from powmon.common.schema import (
    READING_PREFIX,
    STATUS_PREFIX,
    Reading,
    decode_reading,
    decode_status,
)
from powmon.common.transport import Heartbeat, close_all, pub_socket, recv_rest, sub_socket
from powmon.uplink.config import UplinkConfig
from powmon.uplink.outputs import Outputs
from powmon.uplink.sender import Stats
from powmon.uplink.spool import Progress, Spool

log = logging.getLogger(__name__)

POLL_MS: Final = 200
POLL_RECOVERING_MS: Final = 10  # replies come on other sockets: look often while waiting
STOP_DRAIN_S: Final = 2.0
READER_STATUS: Final = STATUS_PREFIX + b"reader/"
DRAIN_MAX: Final = 5000  # messages per spool transaction
BATCH_WAIT_S: Final = 0.02
NOBLOCK: Final = int(zmq.NOBLOCK)
RCVMORE: Final = int(zmq.RCVMORE)


def _counters(stats: Stats, filler: GapFiller, outputs: Outputs) -> dict[str, object]:
    return {
        "replayed": filler.replayed, "replay_requests": filler.requests,
        "recovering": filler.recovering, "lost": filler.lost, "lost_ranges": filler.lost_ranges,
        "spool_depth": stats.spool_depth, "received": stats.received,
        "dropped_over_cap": stats.dropped_over_cap, "duplicates": stats.duplicates,
        "bad_messages": stats.bad_messages, **outputs.counters(),
    }  # fmt: skip


class _Receiver:
    """Drains the SUB socket into the spool; counts what it drops and why; fills gaps."""

    def __init__(
        self, sub: zmq.Socket[bytes], spool: Spool, stats: Stats,
        filler: GapFiller | None = None, client: ReplayClient | None = None,
    ) -> None:  # fmt: skip
        self._sub = sub
        self._spool = spool
        self._stats = stats
        self.filler = filler if filler is not None else GapFiller(nowhere)
        self._client = client
        self._limiter = RateLimiter(10.0)
        self.taken = 0  # messages the last drain took off the socket

    @property
    def stats(self) -> Stats:
        return self._stats

    def update_depth(self) -> None:
        self._stats.spool_depth = self._spool.depth()

    def resume(self) -> None:
        """Continue every stream the spool remembers; ask again for holes still open."""
        tracker = self.filler.tracker
        for p in self._spool.progress():
            tracker.resume(p.sensor_id, p.session, p.last_seq, p.missing, p.floor)
            if p.missing:
                self.filler.opened((p.sensor_id, p.session))

    def drain(self) -> int:
        """Take what arrived (readings, heartbeats, replies) into the spool, in one commit."""
        readings: list[Reading] = []
        observe = self.filler.tracker.observe
        self.taken = 0
        while self.taken < DRAIN_MAX:
            try:
                frames = self._take()
            except zmq.Again:
                break
            self.taken += 1
            try:
                if frames[0].startswith(READER_STATUS):
                    self._status(frames)
                    continue
                r = decode_reading(frames)
            except SchemaError as err:
                self._bad(err)
                continue
            self._stats.received += 1
            verdict = observe(r.sensor_id, r.session, r.seq)
            if verdict is Verdict.GAP:
                self.filler.opened((r.sensor_id, r.session))
            elif verdict not in KEEP:
                self._stats.duplicates += 1
                continue
            readings.append(r)
        readings += take_replayed(self._client, self.filler)
        self.filler.tick()
        self._report_lost()
        return self._commit(readings)

    def _take(self) -> list[bytes]:
        """One whole message: recv() per frame and RCVMORE cost about half of recv_multipart;
        a message of any frame count is still taken whole (and refused by the decoder).
        Raises zmq.Again when nothing is queued."""
        return recv_rest(self._sub, [self._sub.recv(NOBLOCK)])

    def _status(self, frames: list[bytes]) -> None:
        status = decode_status(frames)
        if self._client is not None:
            self._client.learn(status)
        self.filler.heartbeat(status)

    def _commit(self, readings: list[Reading]) -> int:
        changed = self.filler.changed
        changed.update((r.sensor_id, r.session) for r in readings)
        tracker = self.filler.tracker
        progress = [
            Progress(sensor, session, nxt - 1, floor, tuple(missing))
            for sensor, session in changed
            if tracker.knows(sensor, session)
            for nxt, floor, missing in [tracker.state(sensor, session)]
        ]
        changed.clear()
        if not readings and not progress:
            return 0
        result = self._spool.add(readings, progress=progress)
        self._stats.duplicates += result.duplicates
        if result.dropped:
            self._stats.dropped_over_cap += result.dropped
            log.error("spool full (UPLINK_SPOOL_MAX=%d): dropped the %d oldest readings, "
                      "%d in all", self._spool.max_rows, result.dropped,
                      self._stats.dropped_over_cap)  # fmt: skip
        return result.inserted

    def _report_lost(self) -> None:
        for gap in self.filler.take_lost():
            ok, held = self._limiter.allow(f"lost/{gap.sensor_id}")
            if ok:
                log.warning("lost sensor=%s session=%s seq=%d..%d count=%d reason=%s%s",
                            gap.sensor_id, gap.session, gap.first, gap.last, gap.count,
                            gap.reason, f" ({held} more since)" if held else "")  # fmt: skip

    def _bad(self, err: SchemaError) -> None:
        self._stats.bad_messages += 1
        ok, held = self._limiter.allow("bad")
        if ok:
            log.warning("dropped a bad message: %s%s", err,
                        f" ({held} more since the last report)" if held else "")  # fmt: skip


def _summary(stats: Stats, outputs: Outputs) -> None:
    log.info("uplink depth=%d received=%d duplicates=%d dropped=%d bad=%d", stats.spool_depth,
             stats.received, stats.duplicates, stats.dropped_over_cap,
             stats.bad_messages)
    outputs.summary()


def run(config: UplinkConfig, stop: threading.Event) -> None:
    if config.http is not None and config.http.verify_tls is False:
        # Said once, at start (config.py); not once per request.
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
    stats = Stats()
    spool = Spool(config.spool_path, config.spool_max)
    stats.spool_depth = spool.depth()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    client = ReplayClient(ctx)
    hb = config.heartbeat_interval
    filler = GapFiller(client.ask, GapTracker(), timeout=max(2.0, 3 * hb),
                       grace=max(5.0, 5 * hb))  # fmt: skip
    sub = sub_socket(ctx, config.broker_backend, [READING_PREFIX, READER_STATUS], config.hwm)
    status = pub_socket(ctx, config.broker_frontend, config.hwm)
    status.setsockopt(zmq.LINGER, 0)
    outputs = Outputs(config)
    beat = Heartbeat(status, "uplink", "uplink", hb, lambda: _counters(stats, filler, outputs))
    receiver = _Receiver(sub, spool, stats, filler, client)
    receiver.resume()
    outputs.start(spool)
    stats.spool_depth = spool.depth()
    log.info("uplink up backend=%s outputs: %s spool=%s depth=%d", config.broker_backend,
             outputs.describe(), config.spool_path, stats.spool_depth)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    try:
        _loop(config, stop, poller, receiver, beat, outputs)
    finally:
        sub.close()
        client.close()  # stop receiving first; every drained batch is already committed
        for name in outputs.shutdown():
            log.warning("output %s is still delivering; its batch stays spooled and is sent "
                        "on the next start", name)
        stats.spool_depth = spool.depth()
        beat.beat("stopping", force=True)
        _summary(stats, outputs)
        spool.close()
        close_all(status)
        ctx.term()


def _loop(config: UplinkConfig, stop: threading.Event, poller: zmq.Poller, receiver: _Receiver,
          beat: Heartbeat, outputs: Outputs) -> None:
    next_summary = time.monotonic() + config.summary_interval
    while not stop.is_set():
        if 0 < receiver.taken < DRAIN_MAX:
            # Let readings gather (at sensor rates: one wake-up per BATCH_WAIT_S for all readers
            # instead of one per reading); a full drain means more is queued: no wait.
            stop.wait(BATCH_WAIT_S)
        elif not receiver.taken:
            poller.poll(POLL_RECOVERING_MS if receiver.filler.recovering else POLL_MS)
        if receiver.drain():
            outputs.poke()
        outputs.check()
        receiver.update_depth()
        beat.beat()
        if time.monotonic() >= next_summary:
            next_summary = time.monotonic() + config.summary_interval
            _summary(receiver.stats, outputs)
    # Readers stop first under `powmon run`: take their last readings before leaving.
    deadline = time.monotonic() + STOP_DRAIN_S
    while receiver.drain() and time.monotonic() < deadline:
        pass
