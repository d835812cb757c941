"""The web application: the page, the event stream, status, metrics, files and report.

Routes (docs/web.md has the event and JSON shapes):
  /             the live page (static/index.html; uPlot vendored, works offline)
  /events       server-sent events: hello, points, status (+ reading with ?readings=1)
  /api/status   the health report, the shape of `powmon status --json`
  /api/history  the chart's buckets of the last HISTORY_S
  /metrics      Prometheus text format
  /files/       the CSV files, /files/<name> downloads one
  /report       a per-sensor summary of the last minutes
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlencode

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from powmon.web import files
from powmon.web.auth import QUERY_PARAM, TokenGate
from powmon.web.bus import on_bus
from powmon.web.config import WebConfig
from powmon.web.hub import Hub
from powmon.web.metrics import registry
from powmon.web.stream import BUCKET_S, Client, sse

STATIC: Final = Path(__file__).resolve().parent / "static"
SHUTDOWN_GRACE_S: Final = 1.0
PING_S: Final = 15  # a comment line now and then keeps proxies from closing a quiet stream


def _query(request: Request) -> str:
    """'?token=...' to pass on in links when the page was opened with the token in its URL."""
    token = request.query_params.get(QUERY_PARAM)
    return "" if token is None else "?" + urlencode({QUERY_PARAM: token})


class Views:
    """The endpoints, around one Hub."""

    def __init__(self, config: WebConfig, hub: Hub) -> None:
        self.config = config
        self.hub = hub
        self.metrics = registry(hub.report)

    async def events(self, request: Request) -> Response:
        hub = self.hub
        peer = f"{request.client.host}:{request.client.port}" if request.client else "?"
        client = hub.connect(peer, request.query_params.get("readings") == "1", time.monotonic())
        if client is None:
            return PlainTextResponse("503: too many event-stream clients\n", status_code=503)
        shutdown = anyio.Event()  # set by sse-starlette when the server stops
        # The stream ends by itself on shutdown (a complete response, not a cancelled one);
        # a stalled client's stream is cancelled after the grace period.
        return EventSourceResponse(
            _stream(hub, client, shutdown), ping=PING_S, shutdown_event=shutdown,
            shutdown_grace_period=SHUTDOWN_GRACE_S,
        )

    async def status(self, request: Request) -> Response:
        return JSONResponse(self.hub.report(time.monotonic()))

    async def history(self, request: Request) -> Response:
        snapshot = self.hub.chart.snapshot()
        return JSONResponse({"bucket_ms": int(BUCKET_S * 1000), "history": snapshot})

    async def scrape(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics), media_type=CONTENT_TYPE_LATEST)

    async def file_list(self, request: Request) -> Response:
        body = files.files_body(self.config.data_root, _query(request))
        return HTMLResponse(files.page("data files", body, _query(request)))

    async def file_get(self, request: Request) -> Response:
        path = files.find_file(self.config.data_root, request.path_params["name"])
        if path is None:
            return PlainTextResponse("404: no such data file\n", status_code=404)
        return StreamingResponse(
            files.snapshot(path), media_type=files.media_type(path),
            headers={"Content-Disposition": f"attachment; filename*=utf-8''{quote(path.name)}"},
        )

    async def report(self, request: Request) -> Response:
        body = files.report_body(self.hub.report(time.monotonic()), self.hub.chart.snapshot())
        return HTMLResponse(files.page("report", body, _query(request)))

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _stream(hub: Hub, client: Client, shutdown: anyio.Event) -> AsyncIterator[bytes]:
    """A client's events from its queue; a `dropped` event first whenever some were lost."""

    async def close_on_shutdown() -> None:
        await shutdown.wait()
        client.close()

    told = 0
    watcher = asyncio.create_task(close_on_shutdown())
    try:
        while (event := await client.get()) is not None:
            if client.dropped != told:
                told = client.dropped
                yield sse("dropped", {"dropped": told})
            yield event
    finally:
        watcher.cancel()
        hub.disconnect(client)


def build_app(config: WebConfig, hub: Hub | None = None) -> Starlette:
    hub = hub if hub is not None else Hub(config.expected, config.units)
    v = Views(config, hub)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with on_bus(hub, config):
            yield

    routes = [
        Route("/", v.index), Route("/events", v.events), Route("/api/status", v.status),
        Route("/api/history", v.history), Route("/metrics", v.scrape),
        Route("/files/", v.file_list), Route("/files/{name}", v.file_get),
        Route("/report", v.report),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(TokenGate, token=config.token)]
    )
