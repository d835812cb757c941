"""A small HTTP/1.1 ingest server for the benchmarks: it can go down and come back on its port.

The uplink figure (uplink_bench) counts requests, readings and connections; the chaos soak
(chaos) keeps every reading by (sensor, session, seq). Both need the same server: keep-alive
(an uplink reuses its connection), a port chosen once and kept across outages, and an outage
that looks like one to a client (the listening socket closed and every open connection cut,
not merely no answer). tests/httpserver.RecordingServer does the same for the tests, but is
not part of the installed package, and `powmon bench` must run from one.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol


class Owner(Protocol):
    """What the server hands each request and connection to."""

    def take(self, body: bytes) -> int:
        """Handle one POST body; return the HTTP status to answer."""

    def connected(self) -> None:
        """A new TCP connection was accepted."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.server.owner.take(body))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, owner: Owner) -> None:
        self.owner = owner
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.conns.add(request)
        self.owner.connected()
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """A server that goes away takes its keep-alive connections with it."""
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Ingest:
    """The server on 127.0.0.1 for `owner`, down until `up()`; `url` is its ingest address."""

    def __init__(self, owner: Owner) -> None:
        self._owner = owner
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    def reserve(self) -> None:
        """Pick the port without listening on it yet (a server down from the start)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    def up(self) -> None:
        self._server = _Server(self.port, self._owner)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening and cut every open connection: an outage as a client sees one."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(5)
