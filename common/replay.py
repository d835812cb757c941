"""Reliable pub-sub for PowMon: readers keep recent readings and resend ranges on request.

PUB/SUB drops what is sent while nobody listens (a writer restart, a broker restart, the first
milliseconds of a fresh connection: ZeroMQ's slow joiner). Following the ZeroMQ guide's
reliable pub-sub patterns (Clone, "get the snapshot/range on a side socket"), each reader keeps
its last REPLAY_BUFFER readings in a ring and answers range requests on a ROUTER socket whose
address it announces in its heartbeat (`replay` counter). A subscriber that sees a jump in seq
asks for the missing range on a DEALER; what the ring no longer holds is reported as gone, so
the subscriber can log the exact lost range instead of waiting forever.

Across hosts the replay socket is a CURVE server like the broker (common.zap), with the
reader host's key pair; its public key travels in the heartbeat beside the address
(`replay_key`), and the asking DEALER uses it as its server key.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Final

import zmq

from powmon.common.curvezmq import Curve, endpoint_host, is_loopback
from powmon.common.errors import PowmonError, SchemaError
from powmon.common.schema.readings import MAX_BATCH, batch_payload
from powmon.common.schema.replay import (
    ReplayReply,
    ReplayRequest,
    decode_replay_reply,
    decode_replay_request,
    encode_replay_reply,
    encode_replay_request,
)
from powmon.common.schema.status import Status
from powmon.common.transport import secure_client
from powmon.common.zap import Gate

log = logging.getLogger(__name__)

MAX_PER_REPLY: Final = 5000


class ReplayRing:
    """The last `size` readings of one session as their packed rows (schema.pack_row, the bytes
    the message carried), and the device samples named lost before some of them; seqs are
    contiguous, so index math works."""

    __slots__ = ("_dropped", "_first", "_items")

    def __init__(self, size: int) -> None:
        self._items: deque[bytes] = deque(maxlen=max(size, 1))
        self._first = 0  # seq of _items[0]
        self._dropped: dict[int, int] = {}  # seq -> device samples lost just before it

    def append(self, seq: int, row: bytes, dropped: int = 0) -> None:
        self.extend(seq, (row,), dropped)

    def extend(self, seq: int, rows: Sequence[bytes], dropped: int = 0) -> None:
        """Rows of seq, seq + 1, ... (what one message carried); `dropped` lie before `seq`."""
        items = self._items
        if not items:
            self._first = seq
        over = len(items) + len(rows) - (items.maxlen or 0)
        items.extend(rows)
        if over > 0:
            self._first += over
            d = self._dropped  # keys come in rising seq order: only the oldest go stale
            while d and (k := next(iter(d))) < self._first:
                del d[k]
        if dropped and rows:
            self._dropped[seq] = dropped

    @property
    def available(self) -> tuple[int, int]:
        return (self._first, self._first + len(self._items) - 1) if self._items else (0, -1)

    def range(self, first: int, last: int, limit: int = MAX_PER_REPLY) -> tuple[int, list[bytes]]:
        """(seq of the first, rows) of first..last that the ring holds, at most `limit`."""
        lo = max(first, self._first) - self._first
        hi = min(last, self._first + len(self._items) - 1) - self._first
        if hi < lo:
            return (0, [])
        hi = min(hi, lo + limit - 1)
        items = self._items
        return (self._first + lo, [items[i] for i in range(lo, hi + 1)])

    def payloads(self, sensor_id: str, session: str, first: int, last: int,
                 limit: int = MAX_PER_REPLY) -> tuple[list[bytes], int]:
        """first..last as batch payloads (at most MAX_BATCH rows each, a new one where the
        device lost samples, so a replayed reading brings its loss) and how many readings
        they hold, from the rows as they were packed: nothing is packed again."""
        seq, rows = self.range(first, last, limit)
        dropped = self._dropped
        losses = sorted(k - seq for k in dropped if seq < k < seq + len(rows))
        payloads: list[bytes] = []
        start = 0
        while start < len(rows):
            end = min(start + MAX_BATCH, len(rows))
            end = next((i for i in losses if start < i < end), end)
            payloads.append(batch_payload(sensor_id, session, seq + start, rows[start:end],
                                          dropped.get(seq + start, 0)))
            start = end
        return payloads, len(rows)


def replay_bind_endpoint(frontend: str) -> str:
    """Where a reader binds its replay socket: on its host's address toward the broker.

    A loopback frontend: that address (a single host, as before). A wildcard, ipc or inproc
    frontend: 127.0.0.1. Any other: the address this host uses to reach the broker, from the
    routing table (a UDP connect sends nothing): the broker's own address on its host, the
    reader host's own address on the others, which is where sinks across the network reach it.
    """
    host = endpoint_host(frontend)
    if host is None or host in ("*", "0.0.0.0", "::"):  # noqa: S104
        return "tcp://127.0.0.1"
    address = host if is_loopback(host) else _route_source(host)
    return f"tcp://[{address}]" if ":" in address else f"tcp://{address}"


def _route_source(host: str) -> str:
    try:
        family, _, _, _, where = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(where)
            return str(probe.getsockname()[0])
    except OSError as err:
        raise PowmonError(
            f"cannot tell this host's address toward the broker at {host} (for the replay "
            f"socket): {err}"
        ) from err


def _bind(sock: zmq.Socket[bytes], base: str, ports: tuple[int, int] | None) -> int:
    """Bind on a port the OS picks, or the first free one of REPLAY_PORTS (for firewalls)."""
    if ports is None:
        return sock.bind_to_random_port(base)
    for port in range(ports[0], ports[1] + 1):
        try:
            sock.bind(f"{base}:{port}")
        except zmq.ZMQError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            continue
        return port
    raise PowmonError(f"REPLAY_PORTS: no free port from {ports[0]} to {ports[1]} on {base}")


class ReplayServer:
    """The reader's side socket: answers range requests from its ring, never blocking.

    With a Gate (CURVE on the bus) it is a CURVE server with the host's key pair, admitting
    the keys the gate admits; `key` is its public key, announced beside `endpoint`.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        sensor_id: str,
        session: str,
        ring: ReplayRing,
        bind_base: str,
        *,
        gate: Gate | None,
        ports: tuple[int, int] | None = None,
    ) -> None:
        self.sensor_id = sensor_id
        self.session = session
        self.ring = ring
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.key = ""
        if gate is not None:
            gate.secure(self.sock)
            self.key = gate.curve.public_text
        try:
            port = _bind(self.sock, bind_base, ports)
        except (zmq.ZMQError, PowmonError):
            self.sock.close()
            raise
        self.endpoint = f"{bind_base}:{port}"
        self.served = 0
        self.bad_requests = 0

    def serve_pending(self) -> int:
        """Answer every request already queued; return how many were answered.

        ZMQ_EVENTS first: the usual answer is "none queued", cheaper told so than by a
        recv that raises; reading it also rearms the socket's edge-triggered descriptor,
        which a reader that polls that descriptor relies on.
        """
        answered = 0
        if not int(self.sock.get(zmq.EVENTS)) & zmq.POLLIN:
            return answered
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return answered
            if len(frames) < 2:
                self.bad_requests += 1
                continue
            try:
                req = decode_replay_request(frames[-1])
            except SchemaError:
                self.bad_requests += 1
                continue
            self.sock.send_multipart([frames[0], self._answer(req)])
            answered += 1

    def _answer(self, req: ReplayRequest) -> bytes:
        if req.session != self.session:
            return encode_replay_reply(self.sensor_id, req.session, (0, -1), [])
        payloads, count = self.ring.payloads(self.sensor_id, self.session, req.first, req.last)
        self.served += count
        return encode_replay_reply(self.sensor_id, self.session, self.ring.available, payloads)

    def close(self) -> None:
        self.sock.close()


class ReplayClient:
    """Asks readers for missing ranges; learns where they listen from their heartbeats.

    One reader runs per sensor, so a request always goes to the sensor's newest reader, even
    for an older session: a restarted reader answers (0, -1) for a session it does not run,
    which tells the asker that range is gone for good, instead of leaving it to wait on the
    dead reader's address. Sockets to readers that went away are closed as their successors
    announce themselves, so there is at most one per sensor.
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], *, curve: Curve | None) -> None:
        self._ctx = ctx
        self._curve = curve
        self._latest: dict[str, tuple[str, str, str]] = {}  # sensor -> (session, endpoint, key)
        self._socks: dict[str, zmq.Socket[bytes]] = {}
        self.bad_replies = 0

    def learn(self, status: Status) -> None:
        """Remember a reader's replay endpoint (and its CURVE key) for its current session."""
        progress = status.reader
        if progress is None or not progress.replay:
            return
        endpoint = progress.replay
        old = self._latest.get(status.ident)
        self._latest[status.ident] = (progress.session, endpoint, progress.replay_key)
        if old is not None and old[1:] != (endpoint, progress.replay_key) and old[1] in self._socks:
            self._socks.pop(old[1]).close()  # that reader is gone; so are its replies

    def knows(self, sensor_id: str, session: str) -> bool:
        return self._latest.get(sensor_id, ("", ""))[0] == session

    def ask(self, sensor_id: str, session: str, first: int, last: int) -> bool:
        """Send a request; False when no endpoint is known (yet) or the socket is full."""
        latest = self._latest.get(sensor_id)
        if latest is None:
            return False
        try:
            self._socket(latest[1], latest[2]).send(
                encode_replay_request(ReplayRequest(session, first, last)), zmq.NOBLOCK
            )
        except zmq.Again:
            return False
        return True

    def _socket(self, endpoint: str, key: str) -> zmq.Socket[bytes]:
        sock = self._socks.get(endpoint)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            if key:  # a reader without CURVE (on loopback) announces no key
                secure_client(sock, self._curve, key.encode("ascii"))
            sock.connect(endpoint)
            self._socks[endpoint] = sock
        return sock

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """The sockets replies come on (one per reader asked), for a loop's poller."""
        return list(self._socks.values())

    def replies(self) -> Iterator[ReplayReply]:
        """Every reply already received, without blocking."""
        for sock in list(self._socks.values()):
            while True:
                try:
                    payload = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    reply = decode_replay_reply(payload)
                except (SchemaError, ValueError, TypeError, OverflowError):
                    # ValueError & co: docs/hostile.md finding S4 (int() of `available`)
                    self.bad_replies += 1
                    continue
                yield reply

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
