"""Readers answer range requests from their ring; what the ring lost is reported as gone."""

from __future__ import annotations

import socket

import pytest
import zmq

from powmon.common.errors import PowmonError
from powmon.common.replay import ReplayClient, ReplayRing, ReplayServer, replay_bind_endpoint
from powmon.common.schema.readings import MAX_BATCH, encode_batch, pack_row
from powmon.common.schema.replay import (
    ReplayReply,
    ReplayRequest,
    decode_replay_reply,
    encode_replay_reply,
    encode_replay_request,
)
from powmon.common.schema.status import ReaderProgress, Status
from tests.helpers import free_tcp_port, wait_until


def _payload(seq: int, session: str = "s1") -> bytes:
    """A reading's packed row, as a reader keeps it in its ring (schema.pack_row)."""
    return pack_row((seq, 512, 0.0, 0.0, 0.0, 0))


def test_ring_keeps_the_last_n_and_knows_its_range() -> None:
    """A ring of 5 after 12 appends holds seq 7..11 and serves only those."""
    ring = ReplayRing(5)
    for seq in range(12):
        ring.append(seq, _payload(seq))
    assert ring.available == (7, 11)
    assert ring.range(0, 100) == (7, [_payload(s) for s in range(7, 12)])
    assert ring.range(9, 9) == (9, [_payload(9)])
    assert ring.range(0, 6) == (0, [])
    assert ring.range(7, 11, limit=2) == (7, [_payload(7), _payload(8)])


def test_ring_answers_with_batches_of_the_rows_as_packed_and_brings_losses_along() -> None:
    """The reply's payloads are batches spliced from the packed rows (nothing packed again):
    byte for byte what packing the readings would give, split where the device lost samples
    (so a replayed reading brings its loss) and at MAX_BATCH."""
    ring = ReplayRing(10_000)
    rows = [(s, 512, 0.0, 0.0, 0.0, 0) for s in range(5000)]
    ring.extend(0, [pack_row(r) for r in rows[:10]])
    ring.extend(10, [pack_row(r) for r in rows[10:5000]], dropped=3)
    payloads, count = ring.payloads("VIC", "s1", 5, 4999)
    assert count == 4995
    assert payloads[0] == encode_batch("VIC", "s1", 5, rows[5:10])[1]
    assert payloads[1] == encode_batch("VIC", "s1", 10, rows[10:10 + MAX_BATCH], dropped=3)[1]
    assert payloads[2] == encode_batch("VIC", "s1", 10 + MAX_BATCH, rows[10 + MAX_BATCH:])[1]
    reply = decode_replay_reply(encode_replay_reply("VIC", "s1", ring.available, payloads))
    assert [r.seq for r in reply.readings] == list(range(5, 5000))
    assert reply.dropped == ((10, 3),)


def test_bind_endpoint_follows_the_broker_interface() -> None:
    """Replay listens on the broker's loopback address, never on all interfaces. (A broker on
    another host: the reader's own address toward it, tests/e2e/test_hosts.py.)"""
    assert replay_bind_endpoint("tcp://127.0.0.1:5555") == "tcp://127.0.0.1"
    assert replay_bind_endpoint("tcp://127.0.0.2:5555") == "tcp://127.0.0.2"
    assert replay_bind_endpoint("tcp://[::1]:5555") == "tcp://[::1]"
    assert replay_bind_endpoint("tcp://*:5555") == "tcp://127.0.0.1"
    assert replay_bind_endpoint("ipc:///tmp/powmon-bus") == "tcp://127.0.0.1"


def test_client_gets_missing_range_and_learns_what_is_gone(
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """Over real sockets: a request for 0..9 of a ring holding 3..9 returns 3..9, avail (3, 9)."""
    ring = ReplayRing(7)
    for seq in range(10):
        ring.append(seq, _payload(seq))
    server = ReplayServer(zmq_ctx, "VIC", "s1", ring, "tcp://127.0.0.1", gate=None)
    client = ReplayClient(zmq_ctx, curve=None)
    assert not client.ask("VIC", "s1", 0, 9)  # no heartbeat seen yet: endpoint unknown
    client.learn(
        Status("reader", "VIC", 1, 0, "running",
               reader=ReaderProgress("s1", replay=server.endpoint))
    )
    assert client.ask("VIC", "s1", 0, 9)
    replies: list[ReplayReply] = []

    def answered() -> bool:
        server.serve_pending()
        replies.extend(client.replies())
        return bool(replies)

    wait_until(answered, timeout=10, what="replay reply")
    (reply,) = replies
    assert reply.available == (3, 9)
    assert [r.seq for r in reply.readings] == list(range(3, 10))
    server.close()
    client.close()


def test_request_for_another_session_gets_nothing(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """After a reader restart its old session is gone for good: avail (0, -1), no readings.

    The old session's endpoint was never learned; the request goes to the sensor's newest
    reader, whose answer settles it instead of leaving the asker waiting.
    """
    ring = ReplayRing(10)
    ring.append(0, _payload(0, "new"))
    server = ReplayServer(zmq_ctx, "VIC", "new", ring, "tcp://127.0.0.1", gate=None)
    client = ReplayClient(zmq_ctx, curve=None)
    client.learn(
        Status("reader", "VIC", 1, 0, "running",
               reader=ReaderProgress("new", replay=server.endpoint))
    )
    assert not client.knows("VIC", "old")
    assert client.ask("VIC", "old", 0, 5)  # goes to the sensor's current reader
    got: list[ReplayReply] = []

    def answered() -> bool:
        server.serve_pending()
        got.extend(client.replies())
        return bool(got)

    wait_until(answered, timeout=10, what="replay reply")
    assert got[0].available == (0, -1)
    assert got[0].readings == ()
    server.close()
    client.close()


def test_junk_request_is_counted_not_fatal(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """Bytes that are not a replay request are counted; the server keeps serving: a good
    request after them is answered."""
    ring = ReplayRing(4)
    ring.append(0, _payload(0))
    server = ReplayServer(zmq_ctx, "VIC", "s1", ring, "tcp://127.0.0.1", gate=None)
    dealer = zmq_ctx.socket(zmq.DEALER)
    dealer.connect(server.endpoint)
    dealer.send(b"\xc1\x00junk")

    def counted() -> bool:
        server.serve_pending()
        return server.bad_requests == 1

    wait_until(counted, timeout=10, what="bad request counted")
    dealer.send(encode_replay_request(ReplayRequest("s1", 0, 0)))

    def answered() -> bool:
        server.serve_pending()
        return bool(dealer.poll(0))

    wait_until(answered, timeout=10, what="the good request answered")
    reply = decode_replay_reply(dealer.recv())
    assert [r.seq for r in reply.readings] == [0]
    assert server.bad_requests == 1
    dealer.close()
    server.close()



def _two_free_ports() -> tuple[int, int]:
    """Two adjacent ports nothing listens on (a range for REPLAY_PORTS)."""
    for _ in range(50):
        port = free_tcp_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port, port + 1
    raise AssertionError("no two adjacent free ports")


def test_replay_ports_pin_the_replay_sockets(zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """REPLAY_PORTS (for a firewall): each reader takes the first free port of the range; when
    none is left the reader stops with one line naming the range."""
    ports = _two_free_ports()

    def server(sensor: str) -> ReplayServer:
        ring = ReplayRing(4)
        return ReplayServer(zmq_ctx, sensor, "s1", ring, "tcp://127.0.0.1", gate=None, ports=ports)

    first, second = server("A"), server("B")
    try:
        assert first.endpoint == f"tcp://127.0.0.1:{ports[0]}"
        assert second.endpoint == f"tcp://127.0.0.1:{ports[1]}"
        with pytest.raises(PowmonError, match=f"REPLAY_PORTS: no free port from {ports[0]} to"):
            server("C")
    finally:
        first.close()
        second.close()
