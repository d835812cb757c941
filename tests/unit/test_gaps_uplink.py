"""The uplink remembers, in its spool, how far each stream got: a restart asks only for holes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from powmon.common.schema.envelope import READING_PREFIX
from powmon.common.schema.readings import Reading, encode_reading
from powmon.sink.loop import Loop
from powmon.sink.tracker import StreamState
from powmon.uplink.spool import Spool
from tests.helpers import wait_until
from tests.uplinks import make_uplink

Ctx = zmq.Context[zmq.Socket[bytes]]


def reading(seq: int) -> Reading:
    return Reading("VIC", "s1", seq, 10**18 + seq, 512.0, 0.0, 0.0, 0.0)


@pytest.fixture
def bus(zmq_ctx: Ctx) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    pub = zmq_ctx.socket(zmq.PUB)
    pub.bind("inproc://gaps-uplink")
    sub = zmq_ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, READING_PREFIX)
    sub.connect("inproc://gaps-uplink")
    yield pub, sub
    pub.close()
    sub.close()


def test_progress_is_committed_with_the_readings_and_survives_a_restart(
    tmp_path: Path, bus: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]
) -> None:
    """After 0..4 and 8..9 the spool says: last 9, hole 5..7; a restarted uplink drops 0..9
    as already had and still knows 5..7 are missing."""
    pub, sub = bus
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, 1000)
    try:
        first = make_uplink(spool, heartbeat_interval=12).core  # replay grace: 60 s
        for seq in [0, 1, 2, 3, 4, 8, 9]:
            pub.send_multipart(encode_reading(reading(seq)))
        wait_until(lambda: Loop(first).step(sub) == 0 and first.received == 7, what="drained")
        assert spool.progress() == [StreamState("VIC", "s1", 9, 0, ((5, 8),))]
    finally:
        spool.close()
    spool = Spool(path, 1000)
    try:
        again = make_uplink(spool, heartbeat_interval=12).core
        again.resume()
        assert again.filler.recovering == 3
        for seq in [3, 9, 6, 10]:
            pub.send_multipart(encode_reading(reading(seq)))
        wait_until(lambda: Loop(again).step(sub) == 0 and again.received == 4, what="drained again")
        assert again.duplicates == 2  # 3 and 9 were had before the restart
        assert [r.reading.seq for r in spool.peek(100)][-2:] == [6, 10]
        assert spool.progress() == [StreamState("VIC", "s1", 10, 0, ((5, 6), (7, 8)))]
    finally:
        spool.close()
