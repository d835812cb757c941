"""Reliable pub-sub for PowMon: readers keep recent readings and resend ranges on request.

PUB/SUB drops what is sent while nobody listens (a writer restart, a broker restart, the first
milliseconds of a fresh connection: ZeroMQ's slow joiner). Following the ZeroMQ guide's
reliable pub-sub patterns (Clone, "get the snapshot/range on a side socket"), each reader keeps
its last REPLAY_BUFFER readings in a ring and answers range requests on a ROUTER socket whose
address it announces in its heartbeat (`replay` counter). A subscriber that sees a jump in seq
asks for the missing range on a DEALER; what the ring no longer holds is reported as gone, so
the subscriber can log the exact lost range instead of waiting forever.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import zmq

from powmon.common.errors import SchemaError
from powmon.common.schema import (
    ReplayReply,
    ReplayRequest,
    Status,
    decode_replay_reply,
    decode_replay_request,
    encode_replay_reply,
    encode_replay_request,
)

log = logging.getLogger(__name__)

MAX_PER_REPLY: Final = 5000


class ReplayRing:
    """The last `size` reading payloads of one session; seq are contiguous, so index math works."""

    __slots__ = ("_first", "_items")

    def __init__(self, size: int) -> None:
        self._items: deque[bytes] = deque(maxlen=max(size, 1))
        self._first = 0  # seq of _items[0]

    def append(self, seq: int, payload: bytes) -> None:
        if not self._items:
            self._first = seq
        elif len(self._items) == self._items.maxlen:
            self._first += 1
        self._items.append(payload)

    @property
    def available(self) -> tuple[int, int]:
        return (self._first, self._first + len(self._items) - 1) if self._items else (0, -1)

    def range(self, first: int, last: int, limit: int = MAX_PER_REPLY) -> list[bytes]:
        lo = max(first, self._first) - self._first
        hi = min(last, self._first + len(self._items) - 1) - self._first
        if hi < lo:
            return []
        hi = min(hi, lo + limit - 1)
        return [self._items[i] for i in range(lo, hi + 1)]


def replay_bind_endpoint(frontend: str) -> str:
    """Bind the replay socket on the broker frontend's interface, on a port the OS picks."""
    match = re.fullmatch(r"tcp://([^:]+|\[[^\]]+\]):\d+", frontend)
    host = match.group(1) if match else "127.0.0.1"
    return f"tcp://{'127.0.0.1' if host in ('*', '0.0.0.0') else host}"  # noqa: S104


class ReplayServer:
    """The reader's side socket: answers range requests from its ring, never blocking."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], sensor_id: str, session: str,
        ring: ReplayRing, bind_base: str,
    ) -> None:  # fmt: skip
        self.sensor_id = sensor_id
        self.session = session
        self.ring = ring
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port(bind_base)
        self.endpoint = f"{bind_base}:{port}"
        self.served = 0
        self.bad_requests = 0

    def serve_pending(self) -> int:
        """Answer every request already queued; return how many were answered."""
        answered = 0
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
        payloads = self.ring.range(req.first, req.last)
        self.served += len(payloads)
        return encode_replay_reply(self.sensor_id, self.session, self.ring.available, payloads)

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True)
class _Asked:
    sensor_id: str
    session: str
    first: int
    last: int
    deadline: float


class ReplayClient:
    """Asks readers for missing ranges; learns where they listen from their heartbeats."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], timeout: float = 3.0) -> None:
        self._ctx = ctx
        self._timeout = timeout
        self._where: dict[tuple[str, str], str] = {}  # (sensor, session) -> endpoint
        self._socks: dict[str, zmq.Socket[bytes]] = {}
        self._asked: list[_Asked] = []
        self.bad_replies = 0

    def learn(self, status: Status) -> None:
        """Remember a reader's replay endpoint for its current session."""
        if status.process != "reader":
            return
        session = status.counters.get("session")
        endpoint = status.counters.get("replay")
        if isinstance(session, str) and isinstance(endpoint, str) and endpoint:
            self._where[(status.ident, session)] = endpoint

    def knows(self, sensor_id: str, session: str) -> bool:
        return (sensor_id, session) in self._where

    def ask(self, sensor_id: str, session: str, first: int, last: int) -> bool:
        """Send a request; False when no endpoint is known (yet) for that session."""
        endpoint = self._where.get((sensor_id, session))
        if endpoint is None:
            return False
        sock = self._socks.get(endpoint)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.connect(endpoint)
            self._socks[endpoint] = sock
        try:
            sock.send(encode_replay_request(ReplayRequest(session, first, last)), zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._asked.append(
            _Asked(sensor_id, session, first, last, time.monotonic() + self._timeout)
        )
        return True

    @property
    def sockets(self) -> list[zmq.Socket[bytes]]:
        return list(self._socks.values())

    @property
    def outstanding(self) -> int:
        return len(self._asked)

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
                except SchemaError:
                    self.bad_replies += 1
                    continue
                self._settle(reply.sensor_id, reply.session)
                yield reply

    def _settle(self, sensor_id: str, session: str) -> None:
        for i, asked in enumerate(self._asked):
            if asked.sensor_id == sensor_id and asked.session == session:
                del self._asked[i]
                return

    def expired(self) -> list[tuple[str, str, int, int]]:
        """Requests that got no reply in time (the reader died or went away)."""
        now = time.monotonic()
        gone = [a for a in self._asked if a.deadline <= now]
        self._asked = [a for a in self._asked if a.deadline > now]
        return [(a.sensor_id, a.session, a.first, a.last) for a in gone]

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
