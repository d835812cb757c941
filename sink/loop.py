"""The sink core's loop: the sockets, when to wake, the heartbeat, and the drain on stop.

What happens between turns is decided here; what a turn does with the messages is the
bookkeeping's (sink/bookkeeping.py). The loop sleeps until a message, a replay reply, a
deadline it computed or a stop (no fixed tick: a sink at rest wakes once per heartbeat), lets
readings gather for `CoreConfig.gather` after a partial batch (one wake-up per 100 ms for all
readers together instead of one per message), never waits past the sink's own deadline (the
writer's next flush), and on stop drains what already arrived before closing the sink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import zmq

from powmon.common.replay import ReplayClient
from powmon.common.runtime import wake_fd
from powmon.common.schema.envelope import READING_PREFIX, STATUS_PREFIX
from powmon.common.schema.status import STATE_STOPPED
from powmon.common.transport import Heartbeat, close_all, pub_socket, recv_rest, sub_socket
from powmon.sink.bookkeeping import SinkCore

if TYPE_CHECKING:  # the interface re-exports serve() from here: annotations only
    from powmon.sink.api import CoreConfig, Sink

log = logging.getLogger(__name__)

READER_STATUS: Final = STATUS_PREFIX + b"reader/"
SUPERVISOR_STATUS: Final = STATUS_PREFIX + b"supervisor/"  # which readers ended (ReaderEnd)
POLL_MAX: Final = 0.2  # the longest sleep when the stop request cannot wake the poll
STOP_DRAIN_SECONDS: Final = 5.0  # below powmon run's stop grace (10 s), which then kills
DRAIN_QUIET_MS: Final = 50
NOBLOCK: Final = int(zmq.NOBLOCK)
RCVMORE: Final = int(zmq.RCVMORE)


class Loop:
    """Turns of one sink's core: take a batch, let the bookkeeping store it, tick the sink."""

    def __init__(self, core: SinkCore) -> None:
        self.core = core
        self._clock = core.clock
        self._next_summary = self._clock() + core.config.summary_interval

    def step(self, sock: zmq.Socket[bytes]) -> int:
        """Take what is queued (up to a batch), fill holes, store it all at once; return how
        many messages were taken."""
        core = self.core
        messages = take(sock, core.config.batch)
        core.turn(messages)
        now = self._clock()
        core.sink.tick(now)
        if now >= self._next_summary:
            self._next_summary = now + core.config.summary_interval
            log.info("summary %s", " ".join(f"{k}={v}" for k, v in core.counters().items()))
        return len(messages)

    def run(self, sub: zmq.Socket[bytes], beat: Heartbeat, stop: threading.Event) -> None:
        """Sleep until a message, a reply, a deadline or a stop; then take the bus in batches.

        The deadlines are computed, never a fixed tick: the sink's own (the writer's next
        flush, only while rows are pending), the heartbeat, the gap filler's (a request's
        timeout, a stopped reader's grace) and the summary line. Replay replies and the stop
        request (common.runtime.Stop) are in the same poll as the bus, so a sink at rest
        wakes once per heartbeat. After a partial batch it lets readings gather for
        `CoreConfig.gather` (readers publish every PUBLISH_INTERVAL: a message per reader per
        wake-up instead of one per arrival); after a full batch it goes on at once.
        """
        batch, gather = self.core.config.batch, self.core.config.gather
        waker = _Waker(sub, stop, self.core.client)
        got = 0
        while not stop.is_set():
            wait = self._due(beat)
            if 0 < got < batch:
                stop.wait(min(gather, wait))
            elif got < batch:  # a full batch means more is queued: skip the wait
                waker.wait(wait)
            got = self.step(sub)
            beat.beat()

    def _due(self, beat: Heartbeat) -> float:
        """Seconds until the soonest deadline of the sink, the heartbeat, the filler and the
        summary."""
        now = self._clock()
        core = self.core
        return max(0.0, min(core.sink.due_in(now), beat.due_in(now), core.due_in(now),
                            self._next_summary - now))

    def drain(self, sub: zmq.Socket[bytes]) -> None:
        """Take what already arrived before stopping, until the bus goes quiet (the readers,
        stopped first, have sent their last heartbeats) or a deadline against one that never
        does; then settle what stopped readers still owed."""
        deadline = time.monotonic() + STOP_DRAIN_SECONDS
        while time.monotonic() < deadline:
            if self.step(sub) < self.core.config.batch and not sub.poll(DRAIN_QUIET_MS,
                                                                         zmq.POLLIN):
                break
        self.core.finish()


def take(sock: zmq.Socket[bytes], batch: int) -> list[Sequence[bytes]]:
    """Up to `batch` messages that are already queued, without blocking.

    copy=True: for ~100-byte messages bytes beat zmq.Frame, and msgpack wants bytes.
    recv() per frame and RCVMORE instead of recv_multipart: cheaper per message
    (benchmarks/README.md); a message of any other frame count is still taken whole (and
    refused).
    """
    recv, more = sock.recv, sock.getsockopt
    messages: list[Sequence[bytes]] = []
    for _ in range(batch):
        try:
            topic = recv(NOBLOCK)
        except zmq.Again:
            break
        if not more(RCVMORE):
            messages.append((topic,))
            continue
        payload = recv()  # the frames of a message arrive together: already queued
        if more(RCVMORE):
            messages.append(recv_rest(sock, [topic, payload]))
        else:
            messages.append((topic, payload))
    return messages


class _Waker:
    """The core's one poll: the bus, the replay replies, and the stop request."""

    def __init__(self, sub: zmq.Socket[bytes], stop: threading.Event,
                 client: ReplayClient | None) -> None:
        self._poller = zmq.Poller()
        self._poller.register(sub, zmq.POLLIN)
        self._stop_fd = wake_fd(stop)
        if self._stop_fd is not None:
            self._poller.register(self._stop_fd, zmq.POLLIN)
        self._client = client
        self._replies: set[zmq.Socket[bytes]] = set()

    def wait(self, seconds: float) -> None:
        if self._client is not None:
            socks = set(self._client.sockets())
            for sock in self._replies - socks:
                self._poller.unregister(sock)
            for sock in socks - self._replies:
                self._poller.register(sock, zmq.POLLIN)
            self._replies = socks
        if self._stop_fd is None:  # a plain Event cannot wake the poll: look often enough
            seconds = min(seconds, POLL_MAX)
        self._poller.poll(int(1000 * seconds) if seconds > 0 else 0)


def serve(config: CoreConfig, sink: Sink, stop: threading.Event) -> None:
    """Run one sink on the bus until `stop`; sockets live only inside this call."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    client = ReplayClient(ctx, curve=config.curve)
    core = SinkCore(config, sink, client)
    sub: zmq.Socket[bytes] | None = None
    pub: zmq.Socket[bytes] | None = None
    beat: Heartbeat | None = None
    try:
        core.resume()
        topics = [READING_PREFIX, READER_STATUS, SUPERVISOR_STATUS, *config.status_topics]
        sub = sub_socket(ctx, config.backend, topics, config.hwm, curve=config.curve)
        pub = pub_socket(ctx, config.frontend, config.hwm, curve=config.curve)
        beat = Heartbeat(pub, config.process, config.process, config.heartbeat_interval,
                         core.counters)
        loop = Loop(core)
        loop.run(sub, beat, stop)
        loop.drain(sub)
    finally:
        close_all(sub)
        client.close()  # stop receiving first: every batch taken is already stored
        try:
            sink.close()  # the last flush, also after a crash: keep what can be kept
        finally:
            if beat is not None:
                beat.beat(STATE_STOPPED, force=True)
            close_all(pub)
            ctx.term()
