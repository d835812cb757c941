"""The token gate: with WEB_TOKEN set, every request for data must carry it.

The page itself (`/` and `/static/`: HTML, script, style, the charting library) holds no data
and is served to anyone, so that a browser opened without the token can say what is missing;
everything it then fetches (events, status, metrics, files, report) needs the token,

as `Authorization: Bearer <token>` (Prometheus' `authorization` setting, curl -H), or as the
query parameter `?token=<token>` (a browser's EventSource cannot set headers; the page passes
the token it was opened with on to every request it makes). Compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Final

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

QUERY_PARAM: Final = "token"
PUBLIC: Final = ("/static/",)
SCHEME: Final = "bearer "


class TokenGate:
    """ASGI middleware: 401 for an HTTP request without the token; a no-op without one."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self._token = None if token is None else token.encode()

    def allowed(self, conn: HTTPConnection) -> bool:
        path = conn.url.path
        if self._token is None or path == "/" or path.startswith(PUBLIC):
            return True
        header = conn.headers.get("authorization", "")
        given = header[len(SCHEME):] if header.lower().startswith(SCHEME) else None
        if given is None:
            given = conn.query_params.get(QUERY_PARAM)
        return given is not None and hmac.compare_digest(given.strip().encode(), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.allowed(HTTPConnection(scope)):
            response = PlainTextResponse(
                "401: this PowMon page needs its token: 'Authorization: Bearer <token>' or "
                "'?token=<token>' (WEB_TOKEN in settings.yaml)\n",
                status_code=401, headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
