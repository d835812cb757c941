"""tests/httpserver.py's RecordingServer behind TLS: https://127.0.0.1:<port>/ingest.

The listening socket is wrapped with an SSLContext holding a certificate (tests/servers/tls.py
makes a CA and one for 127.0.0.1), so each accepted connection does its TLS handshake before
the HTTP handler reads anything: a client that refuses the certificate leaves no request
behind (the failed accept is an OSError, which socketserver drops), and `requests` is empty.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

from tests.httpserver import RecordingServer, _Server


class TlsRecordingServer(RecordingServer):
    """A RecordingServer speaking HTTPS with `cert` and `key`."""

    def __init__(self, cert: Path, key: Path, path: str = "/ingest") -> None:
        super().__init__(path)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert, key)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{self.path}"

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start_listening(self) -> None:
        """RecordingServer.start_listening, with the socket wrapped before the first accept."""
        assert self._server is None, "already listening"
        server = _Server(("127.0.0.1", self.port), self)
        server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
