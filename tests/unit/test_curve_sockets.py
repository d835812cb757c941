"""CURVE over real sockets: the gate admits authorised keys only, logs and counts refusals, and
the replay side channel works (and refuses) the same way as the bus."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import pytest
import zmq

from powmon.broker.broker import BrokerConfig
from powmon.broker.broker import run as broker_run
from powmon.common.curvezmq import Curve
from powmon.common.errors import PowmonError, SchemaError
from powmon.common.replay import ReplayClient, ReplayRing, ReplayServer
from powmon.common.schema.readings import pack_row
from powmon.common.schema.status import ReaderProgress, Status, decode_status, encode_status
from powmon.common.transport import pub_socket, sub_socket, wait_for_broker
from powmon.common.zap import Gate
from powmon.probes import reach
from tests.helpers import free_tcp_port, wait_until
from tests.keys import client_curve, host_keys, lab_keys, server_curve


def subscriber(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, curve: Curve
) -> zmq.Socket[bytes]:
    return sub_socket(ctx, endpoint, [b"reading/"], 1000, curve=curve)


class Bus:
    """The broker's frontend (XSUB) or backend (XPUB) behind a Gate, in-process."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], curve: Curve, kind: int) -> None:
        self.gate = Gate(ctx, curve, "the bus")
        self.sock = ctx.socket(kind)
        if kind == zmq.XPUB:
            self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription
        self.gate.secure(self.sock)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def subscribed(self) -> bool:
        """True once a subscriber's subscription arrived: it got through the gate."""
        return bool(self.sock.poll(20)) and bool(self.sock.recv())

    def close(self) -> None:
        self.sock.close()
        self.gate.close()


def test_the_gate_admits_authorised_keys_and_refuses_others(
    tmp_path: Path,
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
    other_ctx: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key in CURVE_AUTHORIZED gets in (a broken file beside it is named and skipped); an
    unknown one is refused, counted and logged at WARNING with the peer's address and its key;
    once its .key file is copied into the folder the same host's next connection gets in,
    without restarting anything."""
    lab = lab_keys(tmp_path)
    pi1_secret, pi2_public, pi2_secret = lab.known[1], *lab.stranger
    authorized = lab.authorized
    (authorized / "junk.key").write_text("not a certificate\n", encoding="utf-8")
    broker = server_curve(lab.broker[1], authorized)
    bus = Bus(zmq_ctx, broker, zmq.XPUB)
    try:
        pi1 = subscriber(other_ctx, bus.endpoint, client_curve(pi1_secret, broker))
        wait_until(bus.subscribed, what="pi1's subscription through the gate")
        assert "junk.key: ignored" in caplog.text  # a bad file is named, the others still count
        with caplog.at_level(logging.WARNING, logger="powmon.common.zap"):
            pi2 = subscriber(other_ctx, bus.endpoint, client_curve(pi2_secret, broker))
            wait_until(lambda: bus.gate.refused == 1, what="pi2 refused")
        assert not bus.subscribed()
        pi2_key = client_curve(pi2_secret, broker).public_text
        [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert "from 127.0.0.1" in line
        assert pi2_key in line
        assert bus.gate.admitted == 1
        pi2.close()
        shutil.copy(pi2_public, authorized)
        again = subscriber(other_ctx, bus.endpoint, client_curve(pi2_secret, broker))
        wait_until(bus.subscribed, what="pi2's subscription once authorised")
        assert bus.gate.refused == 1
        pi1.close()
        again.close()
    finally:
        bus.close()


def test_a_reader_stops_when_the_broker_refuses_its_key(
    tmp_path: Path,
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
    other_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """ZeroMQ does not retry a refused connection, so a reader would publish into nothing:
    wait_for_broker raises, saying which key to authorise and where."""
    (tmp_path / "authorized").mkdir()
    _, broker_secret = host_keys(tmp_path, "lab-pc")
    _, pi_secret = host_keys(tmp_path, "pi2")
    broker = server_curve(broker_secret, tmp_path / "authorized")
    bus = Bus(zmq_ctx, broker, zmq.XSUB)
    curve = client_curve(pi_secret, broker)
    pub = pub_socket(other_ctx, bus.endpoint, 1000, curve=curve)
    try:
        with pytest.raises(PowmonError) as info:
            wait_for_broker(pub, threading.Event(), 5.0, bus.endpoint, curve)
        assert f"refused this host's CURVE key {curve.public_text}" in str(info.value)
        assert "CURVE_AUTHORIZED" in str(info.value)
    finally:
        pub.close()
        bus.close()


def _learn(client: ReplayClient, server: ReplayServer) -> None:
    progress = ReaderProgress("s1", 10, 10, server.endpoint, 0, server.key)
    status = Status("reader", "VIC", 1, 1, "running", {}, reader=progress)
    client.learn(decode_status(encode_status(status)))  # as the sink gets it, off the wire


def test_replay_across_hosts_is_a_curve_server_with_the_readers_key(
    tmp_path: Path,
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
    other_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """The reader announces its replay socket's public key beside its address; a sink with the
    broker host's key (admitted by every reader host) gets its range replayed; a sink with a
    key the reader host does not know gets nothing, and is counted as refused."""
    keys = tmp_path / "keys"
    _, broker_secret = host_keys(keys, "lab-pc")
    _, pi_secret = host_keys(keys, "pi2")
    _, stranger_secret = host_keys(keys, "stranger")
    broker = server_curve(broker_secret, None)
    reader_host = client_curve(pi_secret, broker)
    gate = Gate(zmq_ctx, reader_host, "the replay socket")
    ring = ReplayRing(100)
    for seq in range(10):
        ring.append(seq, pack_row((1, 512, 0.0, 0.0, 0.0, 0)))
    server = ReplayServer(zmq_ctx, "VIC", "s1", ring, "tcp://127.0.0.1", gate=gate)
    sink = ReplayClient(other_ctx, curve=broker)
    stranger = ReplayClient(other_ctx, curve=client_curve(stranger_secret, broker))
    try:
        assert server.key == reader_host.public_text
        for client in (sink, stranger):
            _learn(client, server)
            assert client.ask("VIC", "s1", 3, 5)

        def answered() -> list[list[int]]:
            server.serve_pending()
            return [[r.seq for r in reply.readings] for reply in sink.replies()]

        [seqs] = wait_until(answered, what="the replayed range")
        assert seqs == [3, 4, 5]
        assert sink.bad_replies == 0
        wait_until(lambda: gate.refused == 1, what="the stranger refused")
        assert server.serve_pending() == 0
        assert list(stranger.replies()) == []
    finally:
        sink.close()
        stranger.close()
        server.close()
        gate.close()


def test_replay_key_travels_in_the_heartbeat_and_is_checked() -> None:
    """replay_key round-trips as a typed field; a key that is not 40 characters of Z85 is a
    bad message (counted and dropped by sinks), never a socket option set from junk."""
    key = zmq.curve_keypair()[0].decode()
    decoded = decode_status(encode_status(_reader_status(key)))
    assert decoded.reader is not None
    assert decoded.reader.replay_key == key
    assert decoded.counters["replay_key"] == key  # taps and tools see it as before
    with pytest.raises(SchemaError, match="replay_key"):
        decode_status(encode_status(_reader_status("x" * 39)))


def _reader_status(key: str) -> Status:
    progress = ReaderProgress("s1", 1, 1, "tcp://10.0.0.2:5600", 0, key)
    return Status("reader", "VIC", 1, 1, "running", {}, reader=progress)


def test_the_broker_counts_clients_that_fail_the_handshake(
    tmp_path: Path, other_ctx: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    """Clients that never reach the gate (no CURVE at all; the wrong CURVE_SERVER_PUBLIC) are
    logged with the reason and counted in the broker's heartbeat (`curve_failed`), apart from
    unknown keys (`curve_refused`); check-config's probe tells each client what is wrong."""
    (tmp_path / "authorized").mkdir()
    _, broker_secret = host_keys(tmp_path, "lab-pc")
    _, pi_secret = host_keys(tmp_path, "pi2")
    curve = server_curve(broker_secret, tmp_path / "authorized")
    front, back = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(2))
    stop = threading.Event()
    config = BrokerConfig(front, back, 1000, 0.1, curve)
    with caplog.at_level(logging.WARNING, logger="powmon.broker.broker"):
        thread = threading.Thread(target=broker_run, args=(config, stop), daemon=True)
        thread.start()
        status = sub_socket(other_ctx, back, [b"status/broker/"], 1000, curve=curve)
        try:
            assert reach(front, zmq.PUB, curve) == (True, "reached; CURVE handshake succeeded")
            ok, plain = reach(back, zmq.SUB, None)
            assert not ok
            assert "wants CURVE keys: set CURVE_CLIENT_KEY and CURVE_SERVER_PUBLIC" in plain
            wrong = Curve(curve.pair, zmq.curve_keypair()[0], broker_here=False, authorized=None)
            _, why = reach(front, zmq.PUB, wrong)
            assert "is CURVE_SERVER_PUBLIC the broker's public key" in why
            ok, unknown = reach(back, zmq.SUB, client_curve(pi_secret, curve))
            assert not ok
            assert "refused this host's CURVE key" in unknown

            def counted() -> dict[str, int] | None:
                while status.poll(100):
                    counters = decode_status(status.recv_multipart()).counters
                    if counters["curve_failed"] >= 2 and counters["curve_refused"] >= 1:
                        return dict(counters)
                return None

            wait_until(counted, what="curve_failed and curve_refused in the heartbeat")
        finally:
            status.close()
            stop.set()
            thread.join(10)
    text = caplog.text
    assert "failed the CURVE handshake" in text
    # The client without CURVE: named, or (when it saw the mismatch first and hung up, a race
    # inside libzmq) said to have hung up mid-handshake; never a bare error number.
    assert "it has no CURVE keys" in text or "it hung up during the handshake" in text
