"""The InfluxDB output: line protocol over the shared HTTP transport, its write URLs, its token,
and what a refused or partial write means.

An output of its own (registry.py: REMOTE_SAVE with UPLINK_FORMAT influx), made of the HTTP
transport every HTTP output shares (http_output.HttpTransport: Session, TLS, headers, POST,
classify) plus what only InfluxDB has: the write URL and `Authorization: Token` built from
INFLUX_* (`influx_config`), the line-protocol body (formats.influx_requests), and the reading
of a 400/422 (`InfluxOutput.answer`). It runs as the output named `http`, as it always has:
its position in the spool, `output_http` in the heartbeat and its log lines stay the same.

Which API: INFLUX_DATABASE set -> 1.x `/write?db=..&precision=ns`; INFLUX_ORG + INFLUX_BUCKET
-> `/api/v2/write?org=..&bucket=..&precision=ns` (2.x, and 3.x's compatible endpoint, where
the bucket names the database). Both take the same line protocol (formats.influx_line).

The answers, as InfluxDB documents and sends them:
- 204: every point stored.
- 400 (1.x, 3.x) or 422 (2.x since 2.5): some or all lines refused; the others are stored.
  1.x: `{"error": "partial write: unable to parse '<line>': <why>\\n... dropped=N"}` (parse
  errors quote each refused line) or `{"error": "partial write: points beyond retention policy
  dropped=N"}` (names none). 2.x: `{"code": "invalid", "message": "unable to parse '<line>':
  ..."}` (a parse error refuses the whole batch) or `{"code": "unprocessable entity",
  "message": "failure writing points to database: partial write: ... dropped=N"}`. 3.x:
  `{"code": "invalid", "line": N, "message": ...}` (the first refused line, 1-based) or
  `{"error": "partial write of line protocol occurred", "data": [{"line_number": N, ...}]}`.
- 413: the body is over the server's limit (split; see worker/contract).
- 401/403/404: token, permissions, database/bucket/org: nothing is written (refused).
- 429/503: come back later (Retry-After).

What PowMon does with a 400/422 (`partial`): the lines the answer names (quoted or by number)
go to dead letters with the server's reason; every other line of the batch is sent again,
because a 2.x parse error stored none of them, and sending a stored point again is harmless
(InfluxDB overwrites a point with the same measurement, tags and timestamp by the same
values). When the answer names no line, nobody can tell which lines were refused: the safe
thing is to send the batch again in halves, down to single lines, and dead-letter the single
lines still refused. Each round removes a line or halves the batch, so it always ends, and a
point is never retried forever.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from powmon.common.errors import SettingsError
from powmon.common.settings import Secret, Settings
from powmon.uplink.contract import Answer, Dead, Encoded, ids
from powmon.uplink.formats import (
    Request,
    influx_line,
    influx_requests,
    lp_measurement,
    lp_unrepresentable,
)
from powmon.uplink.http_output import HttpConfig, HttpTransport, server_message
from powmon.uplink.spool import Spooled

log = logging.getLogger(__name__)

V2_WRITE_PATH: Final = "/api/v2/write"
V1_WRITE_PATH: Final = "/write"
REASON_MAX: Final = 300
PARTIAL_STATUSES: Final = frozenset({400, 422})


def _write_url(base: str, write_path: str, params: dict[str, str]) -> str:
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if not path.endswith(write_path):
        path += write_path
    query = urlencode(params)
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def influx_write_url(base: str, org: str, bucket: str) -> str:
    """2.x/3.x: `<base>/api/v2/write?org=..&bucket=..&precision=ns`; a base already ending in
    the write path is kept as it is."""
    return _write_url(base, V2_WRITE_PATH, {"org": org, "bucket": bucket, "precision": "ns"})


def influx_v1_write_url(base: str, database: str) -> str:
    """1.x: `<base>/write?db=..&precision=ns`."""
    return _write_url(base, V1_WRITE_PATH, {"db": database, "precision": "ns"})


def influx_config(settings: Settings, environ: Mapping[str, str] | None = None) -> HttpConfig:
    """The InfluxDB output's settings: REMOTE_SAVE's, posting to the write URL with the token."""
    return HttpConfig.from_settings(settings, environ, influx_endpoint)


def influx_endpoint(settings: Settings, base: Secret) -> tuple[Secret, Secret | None]:
    """The write URL (1.x when INFLUX_DATABASE is set, else 2.x/3.x) and the Authorization."""
    up = settings.uplink
    _check_measurement(settings.path, up.influx_measurement)
    auth = up.influx_token and Secret("Token " + up.influx_token.reveal())
    if up.influx_database:
        return Secret(influx_v1_write_url(base.reveal(), up.influx_database)), auth
    # settings._check_influx makes INFLUX_ORG and INFLUX_BUCKET required here.
    url = influx_write_url(base.reveal(), up.influx_org or "", up.influx_bucket or "")
    if auth is None:
        log.warning("INFLUX_TOKEN is not set; InfluxDB 2 will refuse writes (401)")
    return Secret(url), auth


def _check_measurement(where: Path, name: str) -> None:
    why = lp_unrepresentable(name)
    if why is None and name.startswith("#"):
        why = "starts with '#' (a comment in line protocol)"
    if why is not None:
        raise SettingsError(
            f"{where}: INFLUX_MEASUREMENT: expected a line-protocol measurement name, "
            f"got {name!r}: it {why}"
        )


class InfluxOutput(HttpTransport):
    """REMOTE_SAVE into InfluxDB 1.x, 2.x or 3.x: line protocol, partial writes understood."""

    def encode(self, rows: Sequence[Spooled]) -> Encoded[Request]:
        return influx_requests(rows, self._cfg.measurement)

    def answer(self, status: int, retry_after: str | None, body: str,
               rows: Sequence[Spooled]) -> Answer:
        if status in PARTIAL_STATUSES:
            return partial(status, body, rows, self._cfg.measurement)
        return super().answer(status, retry_after, body, rows)


def _numbered(data: Any, count: int) -> set[int]:
    """0-based indexes of the lines a 3.x answer names by number (1-based in the answer)."""
    numbers: list[Any] = []
    if isinstance(data, dict):
        numbers.append(data.get("line"))
        entries = data.get("data")
        if isinstance(entries, list):
            numbers += [e.get("line_number") for e in entries if isinstance(e, dict)]
    return {n - 1 for n in numbers if type(n) is int and 1 <= n <= count}


def refused_lines(body: str, lines: Sequence[str]) -> tuple[set[int], str]:
    """Which of `lines` (0-based) the answer names, and the server's message."""
    message, data = server_message(body)
    named = _numbered(data, len(lines))
    named |= {i for i, line in enumerate(lines) if f"unable to parse '{line}'" in message}
    return named, message


def partial(status: int, body: str, rows: Sequence[Spooled], measurement: str) -> Answer:
    """What to do after a 400/422 from InfluxDB (see the module docstring)."""
    escaped = lp_measurement(measurement)
    lines = [influx_line(escaped, row.reading) for row in rows]
    named, message = refused_lines(body, lines)
    reason = f"HTTP {status}: {' '.join(message.split())[:REASON_MAX]}"
    if not named:
        return Answer.split(rows, status, reason)
    dead = tuple(rows[i] for i in sorted(named))
    rest = tuple(row for i, row in enumerate(rows) if i not in named)
    return Answer(dead=(Dead(ids(dead), status, reason),), again=(rest,) if rest else (),
                  detail=reason)
