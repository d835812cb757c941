"""The gate of a CURVE server: ZeroMQ's ZAP handler, admitting authorised public keys only.

libzmq asks the ZAP handler of a socket's context (RFC 27, on inproc://zeromq.zap.01) about
every CURVE client that completed the handshake, and admits any client at all when no handler
is bound: so a Gate is started before its context binds anything, and `secure()` (the only
place a socket becomes a CURVE server) takes the running Gate.

PowMon answers ZAP itself rather than through zmq.auth's authenticator, because a refusal
must be logged with the peer's address and the unknown key (what an operator needs to admit
it, or to see who knocked), rate-limited through common.logs (one line per 10 s per peer),
and counted for the heartbeat.
The authorised set is this host's own key, the broker's, and the `*.key` files of
CURVE_AUTHORIZED, read again whenever the folder's listing or a file's time or size changes:
a key copied in admits its host at its next connection attempt, without a restart.
Connections already admitted stay until they drop (restart the broker to cut off a key
removed from the folder).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Final

import zmq
from zmq.utils import z85

from powmon.common.curvezmq import Curve, authorized_keys
from powmon.common.errors import PowmonError
from powmon.common.logs import RateLimiter

log = logging.getLogger(__name__)

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_VERSION: Final = b"1.0"
POLL_MS: Final = 100


class AuthorizedKeys:
    """The keys a Gate admits; the folder is read again only when it changed."""

    def __init__(self, curve: Curve, limiter: RateLimiter) -> None:
        self._fixed = frozenset({curve.pair.public, curve.server})  # this host, the broker
        self.folder = curve.authorized
        self._limiter = limiter
        self._seen: object = None
        self._keys: dict[bytes, Path] = {}

    def admits(self, key: bytes) -> bool:
        if key in self._fixed:
            return True
        self._refresh()
        return key in self._keys

    def _refresh(self) -> None:
        if self.folder is None:
            return
        try:
            state = sorted(
                (e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(self.folder)
            )
        except OSError as err:
            self._limiter.log(
                log, logging.WARNING, "curve-folder",
                "CURVE_AUTHORIZED %s: cannot read it (%s); admitting only this host and the "
                "broker", self.folder, err,
            )
            self._seen, self._keys = None, {}
            return
        if state == self._seen:
            return
        self._seen = state
        self._keys, problems = authorized_keys(self.folder)
        for problem in problems:
            self._limiter.log(log, logging.WARNING, f"curve-file/{problem}",
                              "CURVE_AUTHORIZED %s", problem)
        log.info("CURVE_AUTHORIZED %s: %d key(s)", self.folder, len(self._keys))


class Gate:
    """The ZAP handler of one context, on a thread of its own; `close()` before ctx.term()."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], curve: Curve, what: str) -> None:
        self.curve = curve
        self.what = what  # "the bus", "the replay socket": who is refusing, in log lines
        self.refused = 0
        self.admitted = 0
        self._limiter = RateLimiter()
        self.keys = AuthorizedKeys(curve, self._limiter)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: zmq.ZMQError | None = None
        self._thread = threading.Thread(target=self._run, args=(ctx,), name="zap", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise PowmonError(f"cannot start CURVE authentication: {self._error}")

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Make `sock` a CURVE server with this host's key pair, before it binds."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve.pair.secret)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as err:
            self._error = err
            sock.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(POLL_MS):
                    sock.send_multipart(self._answer(sock.recv_multipart()))
        finally:
            sock.close()

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        """A ZAP reply: [version, request id, status code, status text, user id, metadata]."""
        if len(frames) < 6:
            request_id = frames[1] if len(frames) > 1 else b""
            return [ZAP_VERSION, request_id, b"400", b"bad ZAP request", b"", b""]
        _version, request_id, _domain, address, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        peer = address.decode("utf-8", "replace")
        if mechanism == b"CURVE" and len(credentials) == 1:
            key = z85.encode(credentials[0])
            if self.keys.admits(key):
                self.admitted += 1
                log.debug("%s admitted a CURVE client from %s", self.what, peer)
                return [ZAP_VERSION, request_id, b"200", b"OK", key, b""]
            why = f"its key {key.decode('ascii')} is not authorised"
        else:
            why = f"it offered {mechanism.decode('ascii', 'replace')}, not CURVE"
        self.refused += 1
        folder = self.keys.folder or "no CURVE_AUTHORIZED folder"
        self._limiter.log(
            log, logging.WARNING, f"curve-refused/{peer}",
            "%s refused a client from %s: %s (admitted: this host, the broker and the .key "
            "files in %s; refused so far: %d)", self.what, peer, why, folder, self.refused,
        )
        return [ZAP_VERSION, request_id, b"400", b"key not authorised", b"", b""]
