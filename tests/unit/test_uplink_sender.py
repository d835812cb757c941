"""The sender thread against a real HTTP server on 127.0.0.1: batching, retries, dead letter."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path

import pytest

from powmon.common.schema import Reading
from powmon.common.settings import Secret
from powmon.uplink.config import UplinkConfig
from powmon.uplink.sender import Outcome, Sender, Stats, classify, parse_retry_after
from powmon.uplink.spool import Spool
from tests.helpers import free_tcp_port, wait_until
from tests.httpserver import RecordingServer, Reply


def reading(seq: int, session: str = "s1") -> Reading:
    return Reading("VIC", session, seq, 1_700_000_000_000_000_000 + seq, 512.0, 0.02, 0.3, 1.5)


def make_config(tmp_path: Path, url: str, **kw: object) -> UplinkConfig:
    cfg = UplinkConfig(
        broker_frontend="tcp://127.0.0.1:1", broker_backend="tcp://127.0.0.1:2", hwm=1000,
        heartbeat_interval=1.0, spool_path=tmp_path / "spool.sqlite3", spool_max=10_000,
        url=Secret(url), format="json", batch_size=10, batch_wait=0.05, timeout=2.0,
        backoff_max=0.2, verify_tls=True, headers={}, authorization=None, measurement="power",
    )  # fmt: skip
    return replace(cfg, **kw)  # type: ignore[arg-type]


class Running:
    """A Sender on its thread plus a spool connection for the test to fill and inspect."""

    def __init__(self, cfg: UplinkConfig) -> None:
        self.spool = Spool(cfg.spool_path, cfg.spool_max)
        self.stats = Stats()
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.sender = Sender(cfg, self.stats, self.stop, self.wake)
        self.thread = threading.Thread(target=self.sender.run, daemon=True)
        self.thread.start()

    def add(self, readings: list[Reading]) -> None:
        self.spool.add(readings)
        self.wake.set()

    def close(self) -> None:
        self.stop.set()
        self.wake.set()
        self.thread.join(10)
        self.spool.close()


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as srv:
        yield srv


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def go(url: str, **kw: object) -> Running:
        running.append(Running(make_config(tmp_path, url, **kw)))
        return running[-1]

    yield go
    for r in running:
        r.close()
        assert not r.thread.is_alive(), "sender did not stop"


def delivered_keys(server: RecordingServer) -> list[tuple[str, str, int]]:
    return [
        (d["sensor_id"], d["session"], d["seq"])
        for rec in server.delivered()
        for d in json.loads(rec.body)
    ]


def test_batches_are_capped_at_batch_size(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """25 readings with UPLINK_BATCH_SIZE 10 go as batches of at most 10, all delivered once."""
    run = start(server.url)
    run.add([reading(i) for i in range(25)])
    wait_until(lambda: len(delivered_keys(server)) == 25, what="25 readings delivered")
    assert sorted(k[2] for k in delivered_keys(server)) == list(range(25))
    assert max(len(json.loads(r.body)) for r in server.delivered()) <= 10
    wait_until(lambda: run.spool.depth() == 0, what="spool empty")
    assert run.stats.sent == 25


def test_partial_batch_goes_after_batch_wait(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """Fewer readings than a batch are sent once the oldest waited UPLINK_BATCH_WAIT."""
    run = start(server.url, batch_size=1000, batch_wait=0.2)
    run.add([reading(i) for i in range(3)])
    wait_until(lambda: len(server.delivered()) == 1, what="one request")
    assert len(json.loads(server.delivered()[0].body)) == 3


def test_5xx_is_retried_until_the_server_takes_it(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """500 and 503 keep the batch; it is resent and acked after the 200."""
    server.script(Reply(500), Reply(503), Reply(408))
    run = start(server.url)
    run.add([reading(i) for i in range(5)])
    wait_until(lambda: run.spool.depth() == 0, what="spool drained")
    statuses = [r.status for r in server.snapshot()]
    assert statuses == [500, 503, 408, 200]
    assert run.stats.retries == 3
    assert sorted(k[2] for k in delivered_keys(server)) == list(range(5))


def test_4xx_goes_to_dead_letter_and_sending_carries_on(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """A 400 moves the batch to dead letter with status and body; the next batch still goes."""
    server.script(Reply(400, body=b"sensor   VIC\nunknown"))
    run = start(server.url)
    run.add([reading(i) for i in range(3)])
    wait_until(lambda: run.stats.dead_lettered == 3, what="dead-lettered")
    assert "HTTP 400: sensor VIC unknown" in run.stats.last_error
    run.add([reading(i, session="s2") for i in range(2)])
    wait_until(lambda: len(delivered_keys(server)) == 2, what="next batch delivered")
    assert {k[1] for k in delivered_keys(server)} == {"s2"}
    assert run.spool.dead_count() == 3


def test_headers_token_and_content_type_are_sent(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """Bearer token, UPLINK_HEADERS and the format's Content-Type go with every request."""
    run = start(server.url, authorization=Secret("Bearer abc"), headers={"X-Site": "lab 2"})
    run.add([reading(0)])
    (rec,) = server.wait_for(lambda reqs: len(reqs) >= 1)
    assert rec.headers["Authorization"] == "Bearer abc"
    assert rec.headers["X-Site"] == "lab 2"
    assert rec.headers["Content-Type"] == "application/json"
    assert rec.headers["User-Agent"].startswith("powmon-uplink/")
    assert rec.path == "/ingest"


def test_unreachable_server_keeps_readings_and_hides_the_url(
    start: Callable[..., Running],
) -> None:
    """Connection refused: retried, nothing deleted, and the error text has no secret path."""
    port = free_tcp_port()
    run = start(f"http://127.0.0.1:{port}/secret-path/tok3n?key=hush")
    run.add([reading(i) for i in range(4)])
    wait_until(lambda: run.stats.retries >= 2, what="retries")
    assert run.spool.depth() == 4
    error = run.stats.last_error
    assert error and "tok3n" not in error and "hush" not in error and "secret-path" not in error


def test_stop_during_a_hanging_request_leaves_the_batch_spooled(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """A hung request times out within UPLINK_TIMEOUT; on stop the batch is still there."""
    server.hang()
    run = start(server.url, timeout=0.5)
    run.add([reading(i) for i in range(3)])
    server.wait_for(lambda reqs: len(reqs) >= 1)
    run.stop.set()
    run.thread.join(5)
    assert not run.thread.is_alive()
    assert run.spool.depth() == 3


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.OK), (204, Outcome.OK), (408, Outcome.RETRY), (429, Outcome.RETRY),
     (500, Outcome.RETRY), (503, Outcome.RETRY), (302, Outcome.RETRY), (400, Outcome.DEAD),
     (401, Outcome.DEAD), (404, Outcome.DEAD), (413, Outcome.DEAD)],
)  # fmt: skip
def test_status_classification(status: int, outcome: Outcome) -> None:
    """2xx done; 408/429/5xx (and redirects, never followed) retry; other 4xx dead letter."""
    assert classify(status, None, "").outcome is outcome


def test_retry_after_in_seconds_or_http_date() -> None:
    """Retry-After is honoured in both forms; garbage is ignored; only on 429/503."""
    assert parse_retry_after("7") == 7.0
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert classify(429, "3", "").retry_after == 3.0
    assert classify(500, "3", "").retry_after is None
