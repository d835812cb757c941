"""The uplink's receive side: bus -> spool, with bad messages and the size cap accounted for."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner

from powmon.common.schema.envelope import READING_PREFIX
from powmon.common.schema.readings import Reading, encode_reading
from powmon.sink.loop import Loop
from powmon.uplink.__main__ import main
from powmon.uplink.positions import Position, register_outputs
from powmon.uplink.spool import Spool
from tests.helpers import wait_until, write_settings
from tests.uplinks import make_uplink


@pytest.fixture
def bus(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[tuple[zmq.Socket[bytes], ...]]:
    """A PUB and a SUB on an inproc endpoint (real sockets, no broker needed here)."""
    pub = zmq_ctx.socket(zmq.PUB)
    pub.bind("inproc://uplink-receiver-test")
    sub = zmq_ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, READING_PREFIX)
    sub.connect("inproc://uplink-receiver-test")
    yield pub, sub
    pub.close()
    sub.close()


def reading(seq: int) -> Reading:
    return Reading("VIC", "s1", seq, 1_700_000_000_000_000_000 + seq, 512.0, 0.0, 0.0, 0.0)


def test_receiver_spools_counts_bad_messages_and_logs_cap_drops(
    tmp_path: Path, bus: tuple[zmq.Socket[bytes], ...], caplog: pytest.LogCaptureFixture
) -> None:
    """Bad frames are counted and skipped; past the cap, drops are counted, logged at ERROR and
    named in uplink-gaps.csv as spool_full."""
    pub, sub = bus
    spool = Spool(tmp_path / "spool.sqlite3", max_rows=10)
    core, _, stats = make_uplink(spool)
    register_outputs(spool, ["http"])  # what Outputs.start does: an output that sends nothing
    try:
        for seq in range(15):
            pub.send_multipart(encode_reading(reading(seq)))
        pub.send_multipart([b"reading/VIC/", b"\xc1 not msgpack"])
        pub.send_multipart(encode_reading(reading(3)))  # a duplicate
        with caplog.at_level(logging.WARNING, logger="powmon.uplink"):
            wait_until(lambda: Loop(core).step(sub) == 0 and core.received == 16, what="drained")
        assert core.bad_messages == 1
        assert stats.dropped_over_cap == 5
        assert [row.reading.seq for row in spool.peek(100)] == list(range(5, 15))
        core.recover()  # the loss log is written from the core's loop turn
        with core.config.gap_log.open(newline="", encoding="utf-8") as f:
            named = [(g["first_seq"], g["last_seq"], g["reason"]) for g in csv.DictReader(f)]
        assert named == [("0", "4", "spool_full")]
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("dropped the 5 oldest readings" in m for m in errors)
    finally:
        spool.close()


def test_requeue_dead_letters_command(tmp_path: Path) -> None:
    """`powmon-uplink --requeue-dead-letters` puts dead-lettered readings back in the queue."""
    settings = write_settings(tmp_path / "settings.yaml", [{"PORT": "sim://V", "SENSORS_ID": "V"}],
                              UPLINK_SPOOL="spool.sqlite3")
    spool = Spool(tmp_path / "data" / "spool.sqlite3", 1000)
    try:
        register_outputs(spool, ["http"])
        spool.add([reading(0), reading(1)])
        Position(spool, "http").dead_letter([row.id for row in spool.peek(2)], 400, "HTTP 400")
        result = CliRunner().invoke(main, ["--config", str(settings), "--requeue-dead-letters"])
        assert result.exit_code == 0, result.output
        assert "requeued 2" in result.output
        assert [row.reading.seq for row in spool.peek(10)] == [0, 1]
    finally:
        spool.close()
