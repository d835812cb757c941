"""A real HTTP server on 127.0.0.1 for uplink tests: it records requests and misbehaves on cue.

Started in the test process on a free port. It answers with a default reply (200 unless told
otherwise), or with one-shot replies queued by `script()`, or with what a function given to
`respond_with()` makes of each request (a server that behaves like InfluxDB, say); it can hang
(hold the request without answering until `release()`, `close()` or HANG_MAX_S), and it can
stop listening and come back on the same port (SO_REUSEADDR), dropping open keep-alive
connections on the way, which is what a server outage looks like to a client.

Every request is recorded (method, path, headers, body, when it was read); `status` is filled
in only once the reply was written, so `delivered()` lists what the client was told it got.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

HANG_MAX_S: Final = 30.0


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


HANG: Final = Reply(status=-1)  # a reply that never comes


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request was fully read
    status: int | None = None  # set once the reply went out; None: hung or dropped


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], owner: RecordingServer) -> None:
        self.owner = owner
        self.open_conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.open_conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.open_conns.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.open_conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests.Session uses it
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        owner = self.server.owner
        rec = Recorded(self.command, self.path, dict(self.headers.items()), body, time.monotonic())
        reply = owner._take_reply(rec)
        if reply is HANG:
            owner._release.wait(HANG_MAX_S)
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return
        rec.status = reply.status

    do_POST = do_PUT = do_GET = _handle


class RecordingServer:
    """Use as a context manager; `url` is http://127.0.0.1:<port>/ingest."""

    def __init__(self, path: str = "/ingest") -> None:
        self.port = 0
        self.path = path
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._default = Reply()
        self._script: deque[Reply] = deque()
        self._responder: Callable[[Recorded], Reply] | None = None
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RecordingServer:
        self.start_listening()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- behaviour ---------------------------------------------------------------------

    def respond(self, status: int, headers: Mapping[str, str] | None = None,
                body: bytes = b"") -> None:
        """Answer every request from now on with this (after any scripted replies)."""
        with self._lock:
            self._default = Reply(status, dict(headers or {}), body)

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order, then go back to the default."""
        with self._lock:
            self._script.extend(replies)

    def respond_with(self, responder: Callable[[Recorded], Reply] | None) -> None:
        """Answer each request (after any scripted replies) with responder(request)."""
        with self._lock:
            self._responder = responder

    def hang(self) -> None:
        """Hold every request from now on without answering, until release()."""
        self._release.clear()
        with self._lock:
            self._default = HANG

    def release(self, then: Reply | None = None) -> None:
        """Let hanging requests go (their connections close unanswered); answer `then`."""
        with self._lock:
            self._default = then or Reply()
        self._release.set()

    def _take_reply(self, rec: Recorded) -> Reply:
        with self._lock:
            self.requests.append(rec)
            if self._script:
                return self._script.popleft()
            responder = self._responder
            if responder is None:
                return self._default
        return responder(rec)

    # --- listening ---------------------------------------------------------------------

    def start_listening(self) -> None:
        """Listen on the port (a free one the first time, the same one afterwards)."""
        assert self._server is None, "already listening"
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop_listening(self) -> None:
        """Close the listening socket and every open connection: the server is gone."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(5)

    def close(self) -> None:
        self._release.set()
        self.stop_listening()

    # --- what arrived ------------------------------------------------------------------

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def delivered(self) -> list[Recorded]:
        """Requests the server answered with a 2xx."""
        return [r for r in self.snapshot() if r.status is not None and 200 <= r.status < 300]

    def wait_for(self, predicate: Callable[[list[Recorded]], bool], timeout: float = 20.0
                 ) -> list[Recorded]:
        """Poll the recorded requests until `predicate` holds; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s; {len(snap)} requests seen")
            time.sleep(0.02)
