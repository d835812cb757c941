"""The HTTP output: POST batches in the UPLINK_FORMAT (seed, csv, json, influx) to the server.

`classify` is the whole HTTP policy, shared by every format:
- 2xx: done.
- 401, 403, 404: the server refuses this output (a token, a permission, a wrong URL, database
  or bucket): no batch is to blame, so nothing is dead-lettered; the output waits long
  (state `refused`, the reason in the heartbeat) and tries again, readings stay spooled.
- 413: too large: the batch goes again in halves, down to one reading (then dead-lettered).
- 408, 429, 5xx, 3xx (never followed: a redirect would turn the POST into a GET), timeouts and
  connection errors: retried with capped backoff; Retry-After on 429/503 honoured.
- other 4xx: this batch is refused for good: dead letter (InfluxDB's 400/422 instead go
  through influx.partial, which keeps the lines InfluxDB did not refuse).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Sequence
from typing import Final

import requests

from powmon import __version__
from powmon.uplink import formats, influx
from powmon.uplink.config import HttpConfig
from powmon.uplink.contract import Answer, Encoded, Output
from powmon.uplink.spool import Row

MAX_RETRY_AFTER_S: Final = 3600.0
BODY_SNIPPET: Final = 200
RETRY_STATUSES: Final = frozenset({408, 429})
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
REFUSED_STATUSES: Final = frozenset({401, 403, 404})
PARTIAL_STATUSES: Final = frozenset({400, 422})
_ERRNO: Final = re.compile(r"\[Errno -?\d+\][^\"')]*")

Partial = Callable[[int, str, Sequence[Row]], Answer]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None;
    at most MAX_RETRY_AFTER_S."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, delay), MAX_RETRY_AFTER_S)


def classify(
    status: int, retry_after: str | None, body: str, rows: Sequence[Row],
    partial: Partial | None = None,
) -> Answer:
    """What to do with the batch `rows` after the server answered `status`."""
    if 200 <= status < 300:
        return Answer.ok(rows, f"HTTP {status}")
    snippet = " ".join(influx.server_message(body)[0].split())[:BODY_SNIPPET]
    detail = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
    if partial is not None and status in PARTIAL_STATUSES:
        return partial(status, body, rows)
    if status in REFUSED_STATUSES or status == 413:
        return _unaccepted(status, detail, rows)
    after = parse_retry_after(retry_after) if status in RETRY_AFTER_STATUSES else None
    if status in RETRY_STATUSES or status >= 500:
        return Answer.retry(rows, f"HTTP {status}", after)
    if 300 <= status < 400:
        return Answer.retry(rows, f"HTTP {status}: redirects; set the final URL")
    return Answer.dead_all(rows, status, detail)


def _unaccepted(status: int, detail: str, rows: Sequence[Row]) -> Answer:
    """401/403/404: the output is refused; 413: the batch is too large."""
    if status == 413:
        return Answer.split(rows, status, detail)
    return Answer.refused(rows, detail)


def describe(err: requests.RequestException) -> str:
    """'ConnectionError: [Errno 111] Connection refused' rather than urllib3's paragraph."""
    reason = err.args[0] if err.args else err
    text = str(getattr(reason, "reason", None) or reason)
    errno = _ERRNO.search(text)
    return f"{type(err).__name__}: {errno.group(0).strip() if errno else text}"


class HttpOutput(Output[formats.Request]):
    """POSTs each request with one blocking `requests` call on the output's thread, over the
    Session's kept-alive connection."""

    name = "http"

    def __init__(self, cfg: HttpConfig) -> None:
        self._cfg = cfg
        self.where = cfg.where
        self.batch_size, self.batch_wait = cfg.batch_size, cfg.batch_wait
        self.backoff_max = cfg.backoff_max
        self._session: requests.Session | None = None
        self._partial: Partial | None = None
        if cfg.format == "influx":
            measurement = cfg.measurement
            self._partial = lambda status, body, rows: influx.partial(
                status, body, rows, measurement
            )

    def open(self) -> None:
        """A Session that read the environment once, here: proxies, the CA bundle and .netrc
        as requests itself finds them (merge_environment_settings, get_netrc_auth), then
        `trust_env` off, so no POST reads them again (that was ~0.3 ms of CPU per POST, paid
        once per reading by the seed format)."""
        session = requests.Session()
        session.headers["User-Agent"] = f"powmon-uplink/{__version__}"
        session.headers.update(self._cfg.headers)
        url = self._cfg.url.reveal()
        if self._cfg.authorization is not None:
            session.headers["Authorization"] = self._cfg.authorization.reveal()
        elif not any(k.lower() == "authorization" for k in self._cfg.headers):
            session.auth = requests.utils.get_netrc_auth(url)
        found = session.merge_environment_settings(url, {}, None, self._cfg.verify_tls, None)
        session.proxies = found["proxies"]
        session.verify = found["verify"]
        session.trust_env = False
        self._session = session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def encode(self, rows: Sequence[Row]) -> Encoded[formats.Request]:
        return formats.encode(self._cfg.format, rows, self._cfg.measurement)

    def send(self, request: formats.Request) -> Answer:
        if self._session is None:
            raise RuntimeError("HttpOutput.send() before open()")
        ctype = request.content_type
        headers = {} if ctype is None else {"Content-Type": ctype}
        try:
            resp = self._session.post(
                self._cfg.url.reveal(), data=request.body, headers=headers,
                timeout=self._cfg.timeout, allow_redirects=False,
            )
            with resp:
                status = resp.status_code
                body = resp.text if 400 <= status < 500 else ""
                retry_after = resp.headers.get("Retry-After")
        except requests.Timeout:
            return Answer.retry(request.rows, f"no answer within {self._cfg.timeout:g}s")
        except requests.RequestException as err:
            return Answer.retry(request.rows, self._scrub(describe(err)))
        return classify(status, retry_after, body, request.rows, self._partial)

    def _scrub(self, text: str) -> str:
        """Error text without the secret URL: requests puts its path and query in messages."""
        url = self._cfg.url.reveal()
        text = text.replace(url, self.where)
        parts = url.split("://", 1)[-1].split("/", 1)
        if len(parts) == 2 and len(parts[1]) > 0:
            text = text.replace("/" + parts[1], "/<path>")
        return text[:300]
