"""The output core with the HTTP output, against a real HTTP server on 127.0.0.1: batching,
retries, Retry-After, refused outputs, 413 splitting, dead letters."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from powmon.common.settings import Secret
from powmon.uplink.contract import Wait
from powmon.uplink.http_output import HttpOutput, classify, parse_retry_after
from powmon.uplink.spool import Spooled
from tests.helpers import free_tcp_port, wait_until
from tests.httpserver import RecordingServer, Reply
from tests.outputs import Running, http_config, reading


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as srv:
        yield srv


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def go(url: str, **kw: object) -> Running:
        output = HttpOutput(http_config(url, **kw))
        running.append(Running(output, tmp_path / "spool.sqlite3"))
        return running[-1]

    yield go
    for r in running:
        r.close()


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
    assert run.spool.peek(100) == [], "rows every output is done with are deleted"


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
    wait_until(lambda: run.depth() == 0, what="spool drained")
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
    assert run.spool.dead_count("http") == 3


def test_401_refuses_the_output_keeps_readings_and_recovers(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """A 401 dead-letters nothing: the output is `refused` (with the reason), the readings
    stay spooled, and once the server accepts again they are all delivered."""
    server.respond(401, body=b"bad token")
    run = start(server.url)
    run.add([reading(i) for i in range(4)])
    wait_until(lambda: run.stats.state == "refused", what="refused state")
    assert "HTTP 401: bad token" in run.stats.reason
    assert run.stats.dead_lettered == 0 and run.depth() == 4
    server.respond(200)
    wait_until(lambda: sorted(k[2] for k in delivered_keys(server)) == [0, 1, 2, 3],
               what="delivered after the refusal")
    wait_until(lambda: run.stats.state == "running", what="running again")
    assert run.stats.reason == ""


def test_413_splits_the_batch_down_to_one_reading(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """413 sends the batch again in halves; a single reading still too large is dead-lettered,
    the rest is delivered."""
    # [0..3] 413, [0, 1] 413, [0] 200, [1] 413 (dead), [2, 3] 413, [2] 200, [3] 200
    server.script(Reply(413), Reply(413), Reply(200), Reply(413), Reply(413))
    run = start(server.url, batch_size=4)
    run.add([reading(i) for i in range(4)])
    wait_until(lambda: run.depth() == 0, what="all done")
    sizes = [len(json.loads(r.body)) for r in server.snapshot()]
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    assert run.spool.dead_count("http") == 1
    assert sorted(k[2] for k in delivered_keys(server)) == [0, 2, 3]


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
    assert run.depth() == 4 and run.stats.state == "retrying"
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
    run.worker.stop()
    assert run.worker.join(5)
    assert run.depth() == 3


def rows(n: int) -> list[Spooled]:
    return [Spooled(i + 1, reading(i), 0) for i in range(n)]


@pytest.mark.parametrize(
    ("status", "done", "wait"),
    [(200, 2, Wait.NONE), (204, 2, Wait.NONE), (408, 0, Wait.RETRY), (429, 0, Wait.RETRY),
     (500, 0, Wait.RETRY), (503, 0, Wait.RETRY), (302, 0, Wait.RETRY), (400, 0, Wait.NONE),
     (401, 0, Wait.REFUSED), (403, 0, Wait.REFUSED), (404, 0, Wait.REFUSED),
     (413, 0, Wait.NONE)],
)
def test_status_classification(status: int, done: int, wait: Wait) -> None:
    """2xx done; 408/429/5xx (and redirects, never followed) retry; 401/403/404 refuse the
    output; 413 splits; other 4xx dead-letter."""
    answer = classify(status, None, "", rows(2))
    assert (len(answer.done), answer.wait) == (done, wait)
    if status == 400:
        assert answer.dead[0].ids == (1, 2)
    if status == 413:
        assert [len(g) for g in answer.again] == [1, 1]


def test_retry_after_in_seconds_or_http_date() -> None:
    """Retry-After is honoured in both forms; garbage is ignored; only on 429/503; capped."""
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("99999") == 3600.0
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert classify(429, "3", "", rows(1)).retry_after == 3.0
    assert classify(500, "3", "", rows(1)).retry_after is None
