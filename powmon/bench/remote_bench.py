"""Figure 6: the sampling rate with the remote server healthy, hanging, or refusing connections.

The original script posted each reading from its sampling loop, so a slow server took it down
to one reading per second per port. Here the same pipeline (readers, broker, writer, uplink)
runs three times against a local HTTP server that answers 200, one that accepts requests and
never answers, and a port where nobody listens; the readers' rates must not differ.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from powmon.bench.procs import BusWatch, Pipeline, wait_for
from powmon.bench.results import Figure
from powmon.bench.runner import Plan

SENSORS: Final = 4
RATE: Final = 100.0
NOISE: Final = 0.05  # "no difference beyond noise": within 5% of the healthy rate


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def server(kind: str) -> Iterator[str]:
    """The URL of a healthy, hanging or refusing server on 127.0.0.1.

    tests/httpserver.RecordingServer is the richer version of this; it is not part of the
    installed package, and `powmon bench` must run from one. A hanging server is a listening
    socket that never accepts: connections complete in the kernel's backlog, requests go
    unanswered. A refusing one is a port that was free a moment ago.
    """
    if kind == "healthy":
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        httpd.daemon_threads = True
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                  daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/ingest"
        finally:
            httpd.shutdown()
            httpd.server_close()
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if kind == "hanging":
            sock.listen(128)
            yield f"http://127.0.0.1:{port}/ingest"
            return
    yield f"http://127.0.0.1:{port}/ingest"  # closed again: connection refused


def _rate(plan: Plan, kind: str, url: str, seconds: float) -> tuple[float, dict[str, Any]]:
    sensors = [{"PORT": f"sim://U{kind[0]}{i}?amps=1", "SENSORS_ID": f"U{kind[0]}{i}"}
               for i in range(SENSORS)]
    pipe = Pipeline(plan.sub(f"remote-{kind}"), sensors, POLLING_DELAY=1 / RATE,
                    REMOTE_SAVE=True, UPLINK_URL=url, UPLINK_FORMAT="json",
                    UPLINK_TIMEOUT=2.0, HEARTBEAT_INTERVAL=0.5)
    with pipe, BusWatch(pipe.backend) as watch:
        pipe.broker()
        pipe.writer()
        pipe.uplink()
        wait_for(lambda: watch.get("uplink", "uplink"), 30, "the uplink's heartbeat")
        for s in sensors:
            pipe.reader(str(s["SENSORS_ID"]))
        wait_for(lambda: len(watch.snapshot()) == SENSORS, 60, "every reader")
        time.sleep(1.0)  # the uplink's first sends (and first failures) are under way
        before = watch.snapshot()
        time.sleep(seconds)
        after = watch.snapshot()
        uplink = watch.get("uplink", "uplink")
        counters = dict(uplink.counters) if uplink else {}
    rate = sum(after[k] - before.get(k, 0) for k in after) / seconds / SENSORS
    return rate, counters


def run(plan: Plan) -> list[Figure]:
    seconds = 0.8 if plan.quick else 4.0
    rates: dict[str, float] = {}
    notes: dict[str, str] = {}
    for kind in ("healthy", "hanging", "refusing"):
        with server(kind) as url:
            rates[kind], counters = _rate(plan, kind, url, seconds)
        notes[kind] = (f"uplink sent={counters.get('sent')} spool={counters.get('spool_depth')} "
                       f"retries={counters.get('retries')}")
    healthy = rates["healthy"]
    rows = [Figure("6", "per-sensor rate, server healthy", "readings/s", healthy, RATE,
                "POLLING_DELAY", note=notes["healthy"])]
    for kind in ("hanging", "refusing"):
        same = healthy > 0 and abs(rates[kind] / healthy - 1) <= NOISE
        name = f"per-sensor rate, server {kind}"
        rows.append(Figure("6", name, "readings/s", rates[kind], healthy, "healthy",
                        "within 5% of healthy", same, note=notes[kind]))
    return rows
