"""The web process on the bus: one more SUB on the broker's backend, and its own heartbeat.

Runs as two asyncio tasks inside the web server's event loop: the receive loop waits for the
SUB socket to be readable and then takes what is queued without waiting (bounded batches, so
HTTP requests get their turn), and the ticker sends the chart's points a few times a second
(while there is a chart to draw) and the heartbeat. At the high-water mark the broker drops
for this subscriber only: the page can never slow the writer or the uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Final

import zmq
import zmq.asyncio

from powmon.common.schema.envelope import READING_PREFIX, STATUS_PREFIX
from powmon.common.transport import Heartbeat, pub_socket, sub_socket
from powmon.web.config import WebConfig
from powmon.web.hub import Hub
from powmon.web.stream import BUCKET_S

log = logging.getLogger(__name__)

BATCH: Final = 500  # messages taken per wake-up before yielding to the HTTP side
NOBLOCK: Final = int(zmq.NOBLOCK)


async def _receive(hub: Hub, sub: zmq.asyncio.Socket) -> None:
    # A plain view of the same socket: taking queued messages needs no futures.
    drain: zmq.Socket[bytes] = zmq.Socket.shadow(sub.underlying)
    while True:
        await sub.poll()  # readable (POLLIN), no timeout
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                frames = drain.recv_multipart(NOBLOCK)
            except zmq.Again:
                break
            hub.on_message(frames, now)
        await asyncio.sleep(0)  # let requests and streams run between batches


async def _tick(hub: Hub, beat: Heartbeat) -> None:
    """A tick per bucket while there is a chart to draw (open buckets, or clients waiting for
    their status); with neither, only at the next heartbeat: a page nobody watches, on a bus
    at rest, costs nothing."""
    while True:
        busy = hub.clients or hub.chart.open
        await asyncio.sleep(BUCKET_S if busy else max(beat.due_in(time.monotonic()), BUCKET_S))
        hub.tick(time.monotonic())
        beat.beat()


def _died(task: asyncio.Task[None]) -> None:
    """A bus task that ends other than by cancellation would leave the page silently stale."""
    if not task.cancelled() and task.exception() is not None:
        log.error("web: bus task %s died", task.get_name(), exc_info=task.exception())


@contextlib.asynccontextmanager
async def on_bus(hub: Hub, config: WebConfig) -> AsyncIterator[None]:
    """Subscribe and heartbeat while the server runs; a last `stopped` beat at the end."""
    actx = zmq.asyncio.Context()
    sub = sub_socket(actx, config.backend, (READING_PREFIX, STATUS_PREFIX), config.hwm,
                     curve=config.curve)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(actx.underlying)
    pub = pub_socket(ctx, config.frontend, config.hwm, curve=config.curve)
    beat = Heartbeat(pub, "web", "web", config.heartbeat_interval, hub.counters)
    tasks = [asyncio.create_task(_receive(hub, sub)), asyncio.create_task(_tick(hub, beat))]
    for task in tasks:
        task.add_done_callback(_died)
    log.info("web on the bus backend=%s", config.backend)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        beat.beat("stopped", force=True)
        pub.setsockopt(zmq.LINGER, 500)
        pub.close()
        sub.close()
        actx.term()
