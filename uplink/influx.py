"""InfluxDB: the write URLs of 1.x and 2.x/3.x, and what a refused or partial write means.

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
- 413: the body is over the server's limit (split; see sender/contract).
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

import json
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from powmon.uplink.contract import Answer, Dead, ids
from powmon.uplink.formats import influx_line, lp_measurement
from powmon.uplink.spool import Row

V2_WRITE_PATH: Final = "/api/v2/write"
V1_WRITE_PATH: Final = "/write"
REASON_MAX: Final = 300


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


def server_message(body: str) -> tuple[str, Any]:
    """(the server's message, the parsed JSON or None): InfluxDB's `message` (2.x, 3.x) or
    `error` (1.x) field, which many JSON APIs share; the body itself if it is not JSON."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip(), None
    if not isinstance(data, dict):
        return body.strip(), None
    text = data.get("message") or data.get("error") or body
    return str(text).strip(), data


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


def partial(status: int, body: str, rows: Sequence[Row], measurement: str) -> Answer:
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
