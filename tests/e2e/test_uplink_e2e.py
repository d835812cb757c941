"""The uplink end to end: real broker, real uplink process, real HTTP server on 127.0.0.1.

The test publishes readings on the bus with a PUB socket (as a reader would), watches the
uplink's heartbeat on the status topic, and asserts on what the HTTP server recorded: which
(sensor_id, session, seq) keys it answered 2xx for, and how often.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.helpers import Proc, wait_until
from tests.httpserver import RecordingServer, Reply
from tests.uplinkrun import UplinkRun

pytestmark = pytest.mark.e2e

Key = tuple[str, str, int]


class Pipeline(UplinkRun):
    """Broker + uplink processes sending json to a RecordingServer."""

    def __init__(self, tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
                 ctx: zmq.Context[zmq.Socket[bytes]], server: RecordingServer) -> None:
        self.server = server
        super().__init__(
            tmp_path, spawn, broker, ctx, REMOTE_SAVE=True, UPLINK_URL=server.url,
            UPLINK_FORMAT="json", UPLINK_BATCH_SIZE=20, UPLINK_BATCH_WAIT=0.1,
            UPLINK_TIMEOUT=1.0, UPLINK_BACKOFF_MAX=0.3,
        )
        self._warm_seq = 0

    def delivered(self, session: str) -> Counter[Key]:
        """How often the server answered 2xx for each key of `session`."""
        return Counter(
            (d["sensor_id"], d["session"], d["seq"])
            for rec in self.server.delivered()
            for d in json.loads(rec.body)
            if d["session"] == session
        )

    def warm_up(self) -> None:
        """Publish until the uplink (subscribed through the broker) delivers; then go idle."""

        def arrived() -> bool:
            self.publish("warmup", [self._warm_seq])
            self._warm_seq += 1
            return bool(self.delivered("warmup"))

        wait_until(arrived, 30, interval=0.05, what="first reading through the uplink")
        last = ("VIC", "warmup", self._warm_seq - 1)
        wait_until(lambda: last in self.delivered("warmup"), 30, what="last warm-up reading")
        total = sum(self.delivered("warmup").values())
        self.wait_status(
            lambda c: c["sent"] >= total and c["received"] == c["sent"] and not c["spool_depth"],
            "idle uplink: everything it received was delivered",
        )

    def spool_rows(self, table: str = "readings") -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.spool_path)) as db:
            return db.execute(f"SELECT sensor_id, session, seq FROM {table}").fetchall()  # noqa: S608


@pytest.fixture
def pipeline(tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
             zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Pipeline]:
    with RecordingServer() as server:
        yield Pipeline(tmp_path, spawn, broker, zmq_ctx, server)


def keys(session: str, n: int) -> set[Key]:
    return {("VIC", session, seq) for seq in range(n)}


def test_outage_readings_arrive_exactly_once_after_recovery(pipeline: Pipeline) -> None:
    """Server gone for several seconds: everything published meanwhile arrives once, later."""
    p = pipeline
    p.warm_up()
    p.server.stop_listening()
    p.publish("outage", range(200))
    before = p.status()["retries"]
    p.wait_status(lambda c: c["spool_depth"] >= 200 and c["retries"] >= before + 10,
                  "several seconds of failed retries with everything spooled")
    assert not p.delivered("outage")
    p.server.start_listening()
    wait_until(lambda: set(p.delivered("outage")) == keys("outage", 200), 30, what="recovery")
    counts = p.delivered("outage")
    assert set(counts.values()) == {1}, "a reading arrived more than once"
    p.wait_status(lambda c: c["spool_depth"] == 0 and c["last_success_ns"] > 0, "drained")
    assert p.uplink.stop() == 0


def test_retry_after_is_honoured(pipeline: Pipeline) -> None:
    """After a 429 with Retry-After: 2 the next request comes no earlier than 2 s later."""
    p = pipeline
    p.warm_up()
    mark = len(p.server.snapshot())
    p.server.script(Reply(429, {"Retry-After": "2"}))
    p.publish("throttle", range(5))
    reqs = p.server.wait_for(lambda r: len(r) >= mark + 2 and r[mark + 1].status is not None)
    first, second = reqs[mark], reqs[mark + 1]
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 2.0
    assert second.body == first.body  # the same batch, resent
    assert p.status()["retries"] >= 1


def test_400_goes_to_dead_letter_and_the_uplink_carries_on(pipeline: Pipeline) -> None:
    """A 400 dead-letters its batch (kept in the spool, logged at ERROR); later ones arrive."""
    p = pipeline
    p.warm_up()
    p.server.script(Reply(400, body=b"unknown sensor VIC"))
    p.publish("refused", range(5))
    p.wait_status(lambda c: c["dead_lettered"] >= 1, "a dead-lettered batch")
    dead = {tuple(row) for row in p.spool_rows("dead_letter")}
    assert dead and dead <= keys("refused", 5)
    wait_until(lambda: dead | set(p.delivered("refused")) == keys("refused", 5), 20,
               what="the rest of the session delivered")
    assert not dead & set(p.delivered("refused"))
    p.publish("after", range(5))
    wait_until(lambda: set(p.delivered("after")) == keys("after", 5), 20, what="carried on")
    assert p.uplink.stop() == 0
    log = p.uplink.log_path.read_text()
    assert "ERROR" in log and "HTTP 400: unknown sensor VIC" in log


def test_kill_9_mid_batch_loses_nothing(pipeline: Pipeline) -> None:
    """kill -9 while a batch hangs at the server: after a restart every reading arrives."""
    p = pipeline
    p.warm_up()
    p.server.hang()
    p.publish("kill", range(100))
    p.server.wait_for(lambda r: any(x.status is None and b'"kill"' in x.body for x in r))
    p.wait_status(lambda c: c["spool_depth"] >= 100, "all 100 spooled")
    p.uplink.stop(signal.SIGKILL)
    p.server.release()
    p.uplink = p.start_uplink()
    wait_until(lambda: set(p.delivered("kill")) == keys("kill", 100), 30, what="all delivered")
    wait_until(lambda: p.spool_rows() == [], 20, what="spool empty")
    assert p.spool_rows("dead_letter") == []


def test_sigterm_with_a_hanging_server_exits_0_and_keeps_the_batch(pipeline: Pipeline) -> None:
    """SIGTERM does not wait on a hanging server past UPLINK_TIMEOUT; the next start sends."""
    p = pipeline
    p.warm_up()
    p.server.hang()
    p.publish("term", range(30))
    p.server.wait_for(lambda r: any(x.status is None and b'"term"' in x.body for x in r))
    p.wait_status(lambda c: c["spool_depth"] >= 30, "all 30 spooled")
    assert p.uplink.stop(signal.SIGTERM) == 0
    assert set(p.spool_rows()) == keys("term", 30)
    p.server.release()
    p.uplink = p.start_uplink()
    wait_until(lambda: set(p.delivered("term")) == keys("term", 30), 30, what="sent on restart")
