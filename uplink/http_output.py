"""The HTTP transport every HTTP output shares, and the output of the HTTP formats on it.

`HttpConfig` is REMOTE_SAVE's settings (UPLINK_*), resolved before any I/O: the URL (UPLINK_URL,
or HOST decrypted: server_url.py), TLS, headers and the Authorization header. `HttpTransport`
is what both HTTP outputs are made of: one requests Session (TLS, proxies, auth headers, kept
alive), one blocking POST per request on the output's thread, and `classify`, the HTTP policy
every format shares. `HttpOutput` is the HTTP formats' output (seed, csv, json: formats.py);
InfluxDB's (influx.py) is the same transport with its own body and its partial writes.

`classify`:
- 2xx: done.
- 401, 403, 404: the server refuses this output (a token, a permission, a wrong URL, database
  or bucket): no batch is to blame, so nothing is dead-lettered; the output waits long
  (state `refused`, the reason in the heartbeat) and tries again, readings stay spooled.
- 413: too large: the batch goes again in halves, down to one reading (then dead-lettered).
- 408, 429, 5xx, 3xx (never followed: a redirect would turn the POST into a GET), timeouts and
  connection errors: retried with capped backoff; Retry-After on 429/503 honoured.
- other 4xx: this batch is refused for good: dead letter (InfluxDB's 400/422 instead go
  through InfluxOutput.answer, which keeps the lines InfluxDB did not refuse).
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import requests
import urllib3

from powmon import __version__
from powmon.common.errors import SettingsError
from powmon.common.settings import Secret, Settings
from powmon.uplink import formats
from powmon.uplink.contract import Answer, Encoded, Output
from powmon.uplink.server_url import redact_url, resolve_url
from powmon.uplink.spool import Spooled

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S: Final = 3600.0
BODY_SNIPPET: Final = 200
RETRY_STATUSES: Final = frozenset({408, 429})
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
REFUSED_STATUSES: Final = frozenset({401, 403, 404})
_ERRNO: Final = re.compile(r"\[Errno -?\d+\][^\"')]*")


# The URL to POST to and the Authorization, from the server's URL (a kind's way to address it).
Endpoint = Callable[[Settings, Secret], "tuple[Secret, Secret | None]"]


def bearer(settings: Settings, url: Secret) -> tuple[Secret, Secret | None]:
    """The server's own URL, and UPLINK_TOKEN as `Authorization: Bearer <token>`."""
    token = settings.uplink.token
    return url, token and Secret("Bearer " + token.reveal())


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """An HTTP output: the server (or InfluxDB's write URL), the body format, batching, TLS,
    headers and retries."""

    url: Secret
    format: str
    batch_size: int
    batch_wait: float
    timeout: float
    backoff_max: float
    verify_tls: bool | str
    headers: Mapping[str, str] = field(repr=False)
    authorization: Secret | None
    measurement: str

    @property
    def where(self) -> str:
        """The server as it may appear in logs: scheme://host:port."""
        return redact_url(self.url.reveal())

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None,
        endpoint: Endpoint = bearer,
    ) -> HttpConfig:
        """The server of UPLINK_URL or HOST; `endpoint` makes the URL posted to and the
        Authorization from it (default: the URL itself, UPLINK_TOKEN as a Bearer token;
        InfluxDB's: influx.influx_endpoint)."""
        up = settings.uplink
        url, auth = endpoint(settings, resolve_url(settings.path, up, environ))
        if isinstance(up.verify_tls, Path) and not up.verify_tls.is_file():
            raise SettingsError(
                f"{settings.path}: UPLINK_VERIFY_TLS: expected true, false or an existing CA "
                f"bundle file, got {str(up.verify_tls)!r} (not a file)"
            )
        if up.verify_tls is False:
            log.warning("UPLINK_VERIFY_TLS is false: the server's certificate is not checked")
        return cls(
            url=url, format=up.format, batch_size=up.batch_size, batch_wait=up.batch_wait,
            timeout=up.timeout, backoff_max=up.backoff_max,
            verify_tls=up.verify_tls if isinstance(up.verify_tls, bool) else str(up.verify_tls),
            headers=dict(up.headers), authorization=auth, measurement=up.influx_measurement,
        )


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


def server_message(body: str) -> tuple[str, Any]:
    """(the server's message, the parsed JSON or None): the `message` (InfluxDB 2.x, 3.x) or
    `error` (1.x) field many JSON APIs share; the body itself if it is not JSON."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip(), None
    if not isinstance(data, dict):
        return body.strip(), None
    text = data.get("message") or data.get("error") or body
    return str(text).strip(), data


def classify(status: int, retry_after: str | None, body: str, rows: Sequence[Spooled]) -> Answer:
    """What to do with the batch `rows` after the server answered `status`."""
    if 200 <= status < 300:
        return Answer.ok(rows, f"HTTP {status}")
    snippet = " ".join(server_message(body)[0].split())[:BODY_SNIPPET]
    detail = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
    if status in REFUSED_STATUSES:
        return Answer.refused(rows, detail)
    if status == 413:
        return Answer.split(rows, status, detail)
    after = parse_retry_after(retry_after) if status in RETRY_AFTER_STATUSES else None
    if status in RETRY_STATUSES or status >= 500:
        return Answer.retry(rows, f"HTTP {status}", after)
    if 300 <= status < 400:
        return Answer.retry(rows, f"HTTP {status}: redirects; set the final URL")
    return Answer.dead_all(rows, status, detail)


def describe(err: requests.RequestException) -> str:
    """'ConnectionError: [Errno 111] Connection refused' rather than urllib3's paragraph."""
    reason = err.args[0] if err.args else err
    text = str(getattr(reason, "reason", None) or reason)
    errno = _ERRNO.search(text)
    return f"{type(err).__name__}: {errno.group(0).strip() if errno else text}"


class HttpTransport(Output[formats.Request]):
    """An output that POSTs each request with one blocking `requests` call on its thread,
    over the Session's kept-alive connection. A subclass supplies `encode`, and `answer` when
    its server says more than `classify` knows (InfluxDB's partial writes)."""

    name = "http"

    def __init__(self, cfg: HttpConfig) -> None:
        self._cfg = cfg
        self.where = cfg.where
        self.batch_size, self.batch_wait = cfg.batch_size, cfg.batch_wait
        self.backoff_max = cfg.backoff_max
        self._session: requests.Session | None = None

    def open(self) -> None:
        """A Session that read the environment once, here: proxies, the CA bundle and .netrc
        as requests itself finds them (merge_environment_settings, get_netrc_auth), then
        `trust_env` off, so no POST reads them again (that was ~0.3 ms of CPU per POST, paid
        once per reading by the seed format)."""
        if self._cfg.verify_tls is False:
            # Said once, at start (HttpConfig.from_settings); not once per request.
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
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

    def send(self, request: formats.Request) -> Answer:
        if self._session is None:
            raise RuntimeError(f"{type(self).__name__}.send() before open()")
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
        return self.answer(status, retry_after, body, request.rows)

    def answer(self, status: int, retry_after: str | None, body: str,
               rows: Sequence[Spooled]) -> Answer:
        """What the server's answer to the request of `rows` means for them."""
        return classify(status, retry_after, body, rows)

    def _scrub(self, text: str) -> str:
        """Error text without the secret URL: requests puts its path and query in messages."""
        url = self._cfg.url.reveal()
        text = text.replace(url, self.where)
        parts = url.split("://", 1)[-1].split("/", 1)
        if len(parts) == 2 and len(parts[1]) > 0:
            text = text.replace("/" + parts[1], "/<path>")
        return text[:300]


class HttpOutput(HttpTransport):
    """REMOTE_SAVE to a server of your own, or the original PowMon's: seed, csv or json."""

    def encode(self, rows: Sequence[Spooled]) -> Encoded[formats.Request]:
        return formats.encode(self._cfg.format, rows)
