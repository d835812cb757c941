"""The influx format against a server that answers as InfluxDB 2 and 3 document it: the v2
write URL and token, partial writes (the refused lines dead-lettered and counted, the others
stored, nothing retried forever), 413 splitting, 429 Retry-After, 401/404 refusing."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from powmon.common.settings import Secret
from powmon.uplink.influx import InfluxOutput, influx_write_url, refused_lines
from tests.helpers import wait_until
from tests.httpserver import Recorded, RecordingServer, Reply
from tests.outputs import Running, http_config, reading


class FakeInflux:
    """Stores the lines it accepts; refuses lines of sensor BAD the way `mode` says:
    v2-partial: 422, a message naming no line, the other lines stored (OSS 2.x);
    v2-parse:   400 'unable to parse <line>', nothing stored (a 2.x parse error);
    v3-line:    400 with the first refused line's number, the other lines stored (3.x).
    Bodies over `limit` bytes get 413."""

    def __init__(self, mode: str, limit: int = 1 << 20) -> None:
        self.mode, self.limit = mode, limit
        self.stored: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, rec: Recorded) -> Reply:
        if len(rec.body) > self.limit:
            return Reply(413, body=b'{"code":"request too large","message":"too large"}')
        lines = rec.body.decode().splitlines()
        bad = [i for i, line in enumerate(lines) if ",sensor_id=BAD," in line]
        good = [line for i, line in enumerate(lines) if i not in bad]
        if not bad:
            self._store(good)
            return Reply(204)
        if self.mode == "v2-partial":
            self._store(good)
            msg = f"failure writing points to database: partial write: dropped={len(bad)}"
            return self._json(422, {"code": "unprocessable entity", "message": msg})
        if self.mode == "v2-parse":
            msg = f"unable to parse '{lines[bad[0]]}': invalid field format"
            return self._json(400, {"code": "invalid", "message": msg})
        self._store(good)
        return self._json(400, {"code": "invalid", "line": bad[0] + 1, "message": "bad line"})

    def _store(self, lines: list[str]) -> None:
        with self.lock:
            self.stored.update(lines)

    @staticmethod
    def _json(status: int, body: dict[str, object]) -> Reply:
        return Reply(status, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def seqs(self, sensor: str = "VIC") -> set[int]:
        with self.lock:
            found = [line for line in self.stored if f",sensor_id={sensor}," in line]
        return {int(line.split("seq=")[1].split("i")[0]) for line in found}


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer(path="") as srv:
        yield srv


@pytest.fixture
def start(tmp_path: Path, server: RecordingServer) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def go(**kw: object) -> Running:
        url = influx_write_url(server.base_url, "lab", "power")
        cfg = http_config(url, format="influx", authorization=Secret("Token t0k"), **kw)
        running.append(Running(InfluxOutput(cfg), tmp_path / "spool.sqlite3"))
        return running[-1]

    yield go
    for r in running:
        r.close()


def mixed(n: int, bad: set[int]) -> list:  # type: ignore[type-arg]
    return [reading(i, sensor="BAD" if i in bad else "VIC") for i in range(n)]


def test_writes_go_to_the_v2_api_with_the_token(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """POST /api/v2/write?org&bucket&precision=ns, Authorization: Token; 204 is done."""
    influx = FakeInflux("v2-partial")
    server.respond_with(influx)
    run = start()
    run.add(mixed(30, set()))
    wait_until(lambda: influx.seqs() == set(range(30)), what="30 points stored")
    rec = server.snapshot()[0]
    url = urlsplit(rec.path)
    assert url.path == "/api/v2/write"
    assert parse_qs(url.query) == {"org": ["lab"], "bucket": ["power"], "precision": ["ns"]}
    assert rec.headers["Authorization"] == "Token t0k"
    wait_until(lambda: run.depth() == 0, what="acked")


@pytest.mark.parametrize("mode", ["v2-partial", "v2-parse", "v3-line"])
def test_partial_write_dead_letters_only_the_refused_lines(
    server: RecordingServer, start: Callable[..., Running], mode: str
) -> None:
    """Whether the answer names the refused lines (by text or number) or not: exactly the
    refused readings end in dead letters, counted, with InfluxDB's reason; every other
    reading is stored; the output carries on (nothing is retried forever)."""
    influx = FakeInflux(mode)
    server.respond_with(influx)
    run = start(batch_size=40)
    bad = {3, 17, 18, 39}
    run.add(mixed(40, bad))
    wait_until(lambda: run.depth() == 0, 20, what="every reading stored or dead")
    assert influx.seqs() == set(range(40)) - bad
    assert run.spool.dead_count("http") == len(bad) == run.stats.dead_lettered
    assert "HTTP 4" in run.stats.last_error
    run.add([reading(i, session="after") for i in range(5)])
    wait_until(lambda: run.depth() == 0, what="carried on")
    assert run.stats.state == "running"


def test_413_splits_until_the_batches_fit(
    server: RecordingServer, start: Callable[..., Running]
) -> None:
    """A body over the server's limit is sent again in halves until each part fits; nothing
    is dead-lettered when single lines fit."""
    influx = FakeInflux("v2-partial", limit=1500)
    server.respond_with(influx)
    run = start(batch_size=64)
    run.add(mixed(64, set()))
    wait_until(lambda: influx.seqs() == set(range(64)), 20, what="all stored")
    assert 413 in {r.status for r in server.snapshot()}
    assert run.stats.dead_lettered == 0


def test_429_waits_for_retry_after(server: RecordingServer, start: Callable[..., Running]) -> None:
    """429 with Retry-After: the same batch again, no sooner than asked, then stored."""
    influx = FakeInflux("v2-partial")
    server.respond_with(influx)
    server.script(Reply(429, {"Retry-After": "1"}))
    run = start()
    run.add(mixed(5, set()))
    wait_until(lambda: influx.seqs() == set(range(5)), what="stored after the wait")
    # The server records a reply's status once it went out, just after the points were
    # stored: wait for that too.
    first, second = server.wait_for(lambda r: len(r) >= 2 and r[1].status is not None)[:2]
    assert (first.status, second.status) == (429, 204)
    assert second.at - first.at >= 1.0 and second.body == first.body
    assert run.stats.retries == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [(401, b'{"code":"unauthorized","message":"unauthorized access"}'),
     (404, b'{"code":"not found","message":"bucket \\"power\\" not found"}')],
)
def test_401_or_404_stops_the_output_without_dead_letters(
    server: RecordingServer, start: Callable[..., Running], status: int, body: bytes
) -> None:
    """A wrong token or bucket refuses the output: state `refused` with InfluxDB's message,
    readings stay spooled, nothing is dead-lettered; fixed, everything is stored."""
    server.respond(status, body=body)
    run = start()
    run.add(mixed(6, set()))
    wait_until(lambda: run.stats.state == "refused", what="refused")
    assert f"HTTP {status}" in run.stats.reason
    assert json.loads(body)["message"] in run.stats.reason
    assert run.depth() == 6 and run.stats.dead_lettered == 0
    influx = FakeInflux("v2-partial")
    server.respond_with(influx)
    wait_until(lambda: influx.seqs() == set(range(6)), 20, what="stored once accepted")


def test_refused_lines_are_found_by_quote_and_by_number() -> None:
    """1.x quotes every refused line; 3.x gives line numbers (1-based); a message naming no
    line names none."""
    lines = ["a x=1 1", "b x=2 2", "c x=3 3"]
    v1 = json.dumps({"error": "partial write: unable to parse 'b x=2 2': bad\n"
                              "unable to parse 'c x=3 3': bad dropped=0"})
    assert refused_lines(v1, lines)[0] == {1, 2}
    v3 = json.dumps({"error": "partial write of line protocol occurred",
                     "data": [{"line_number": 1, "original_line": "a x=1 1"}]})
    assert refused_lines(v3, lines)[0] == {0}
    assert refused_lines('{"code":"invalid","line":3,"message":"x"}', lines)[0] == {2}
    assert refused_lines('{"error":"partial write: dropped=2"}', lines)[0] == set()
    assert refused_lines("<html>", lines) == (set(), "<html>")
