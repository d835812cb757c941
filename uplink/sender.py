"""The sender thread: spool -> HTTP, with retries, backoff, Retry-After and a dead letter.

Why a thread and not a process or an event loop: the uplink process is already the unit of
isolation from sampling (readers never wait for it), so inside it one blocking `requests`
call on a thread of its own is the simplest thing that keeps the receive loop free. The thread
has its own SQLite connection (WAL lets it delete while the receiver inserts), shares nothing
with the receive loop but the spool file, a `wake` event and the Stats counters (each counter
written by one thread only), and can be abandoned: everything it has not acked is still in
the spool, so a process that exits while a request hangs loses nothing.
"""

from __future__ import annotations

import email.utils
import enum
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Final

import requests

from powmon import __version__
from powmon.common.backoff import backoff
from powmon.common.errors import UplinkError
from powmon.common.logs import RateLimiter
from powmon.uplink import formats
from powmon.uplink.config import UplinkConfig
from powmon.uplink.spool import Row, Spool

log = logging.getLogger(__name__)

POLL_S: Final = 0.2
MAX_RETRY_AFTER_S: Final = 3600.0
BODY_SNIPPET: Final = 200
RETRY_STATUSES: Final = frozenset({408, 429})
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
_ERRNO: Final = re.compile(r"\[Errno -?\d+\][^\"')]*")


class Outcome(enum.Enum):
    OK = "ok"  # 2xx: delete from the spool
    RETRY = "retry"  # 408, 429, 5xx, 3xx, connection errors, timeouts: keep and retry
    DEAD = "dead"  # any other 4xx: the server will never take it; dead letter


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int | None
    detail: str
    retry_after: float | None = None


@dataclass
class Stats:
    """Counters for the heartbeat; the receive loop and the sender each write their own."""

    received: int = 0
    duplicates: int = 0
    bad_messages: int = 0
    dropped_over_cap: int = 0
    spool_depth: int = 0
    sent: int = 0
    batches_ok: int = 0
    retries: int = 0
    dead_lettered: int = 0
    last_success_ns: int = 0
    last_error: str = ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
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


def classify(status: int, retry_after: str | None, body: str) -> Result:
    """What to do with a batch after the server answered `status`."""
    if 200 <= status < 300:
        return Result(Outcome.OK, status, f"HTTP {status}")
    after = parse_retry_after(retry_after) if status in RETRY_AFTER_STATUSES else None
    if status in RETRY_STATUSES or status >= 500:
        return Result(Outcome.RETRY, status, f"HTTP {status}", after)
    if 300 <= status < 400:
        # Following a redirect would turn the POST into a GET and "succeed" without data.
        return Result(Outcome.RETRY, status, f"HTTP {status}: redirects; set the final URL")
    snippet = " ".join(body[:BODY_SNIPPET].split())
    return Result(Outcome.DEAD, status, f"HTTP {status}: {snippet}")


def describe(err: requests.RequestException) -> str:
    """'ConnectionError: [Errno 111] Connection refused' rather than urllib3's paragraph."""
    reason = err.args[0] if err.args else err
    text = str(getattr(reason, "reason", None) or reason)
    errno = _ERRNO.search(text)
    return f"{type(err).__name__}: {errno.group(0).strip() if errno else text}"


class Sender:
    """Takes batches from the spool and delivers them until `stop` is set."""

    def __init__(
        self, config: UplinkConfig, stats: Stats, stop: threading.Event, wake: threading.Event
    ) -> None:
        self._cfg = config
        self._stats = stats
        self._stop = stop
        self._wake = wake
        self._limiter = RateLimiter(10.0)
        self._thread: threading.Thread | None = None
        self.failed: UplinkError | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="uplink-sender", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """New readings are in the spool."""
        self._wake.set()

    def check(self) -> None:
        """Raise UplinkError if the thread ended on its own (the process should exit 1)."""
        if self.failed is not None:
            raise UplinkError(f"uplink sender stopped: {self.failed}") from self.failed
        if self._thread is not None and not self._thread.is_alive():
            # An unexpected exception; threading.excepthook has printed its traceback.
            raise UplinkError("uplink sender thread died; see the traceback above")

    def shutdown(self, timeout: float) -> bool:
        """Stop and wait up to `timeout`; False if a request is still in flight."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def run(self) -> None:
        """Thread body. A spool failure ends the thread; the main loop sees `failed`."""
        try:
            spool = Spool(self._cfg.spool_path, self._cfg.spool_max)
        except UplinkError as err:
            self.failed = err
            return
        session = requests.Session()
        session.headers["User-Agent"] = f"powmon-uplink/{__version__}"
        session.headers.update(self._cfg.headers)
        if self._cfg.authorization is not None:
            session.headers["Authorization"] = self._cfg.authorization.reveal()
        session.verify = self._cfg.verify_tls
        try:
            while not self._stop.is_set():
                rows = self._next_batch(spool)
                if rows:
                    self._deliver(spool, session, rows)
        except UplinkError as err:
            self.failed = err
        finally:
            session.close()
            spool.close()

    def _next_batch(self, spool: Spool) -> list[Row]:
        """Wait until a full batch is ready or the oldest reading waited UPLINK_BATCH_WAIT."""
        size, wait = self._cfg.batch_size, self._cfg.batch_wait
        while not self._stop.is_set():
            self._wake.clear()
            count, oldest_ns = spool.oldest(size)
            timeout = POLL_S
            if oldest_ns is not None:
                waited = (time.time_ns() - oldest_ns) / 1e9
                # A negative wait means the wall clock went back: send rather than stall.
                if count >= size or waited >= wait or waited < 0:
                    return spool.peek(size)
                timeout = min(timeout, wait - waited)
            self._wake.wait(timeout)
        return []

    def _deliver(self, spool: Spool, session: requests.Session, rows: list[Row]) -> None:
        encoded = formats.encode(self._cfg.format, rows, self._cfg.measurement)
        for row_id, why in encoded.rejected:
            spool.dead_letter([row_id], None, why)
            self._stats.dead_lettered += 1
            self._limiter.log(log, logging.ERROR, "unsendable",
                              "reading cannot be sent as %s, moved to dead letter: %s",
                              self._cfg.format, why)  # fmt: skip
        for request in encoded.requests:
            if not self._deliver_one(spool, session, request):
                return

    def _deliver_one(
        self, spool: Spool, session: requests.Session, request: formats.Request
    ) -> bool:
        """Send one request until the server takes or refuses it; False if stopped first."""
        delays = backoff(initial=min(0.5, self._cfg.backoff_max), cap=self._cfg.backoff_max)
        attempts = 0
        while not self._stop.is_set():
            result = self._post(session, request)
            if result.outcome is Outcome.OK:
                spool.ack(request.ids)
                self._record_ok(len(request.ids), attempts)
                return True
            if result.outcome is Outcome.DEAD:
                moved = spool.dead_letter(request.ids, result.status, result.detail)
                self._stats.dead_lettered += moved
                self._stats.last_error = result.detail
                self._limiter.log(log, logging.ERROR, "refused",
                                  "server refused %d readings (%s); moved to dead letter in %s",
                                  moved, result.detail, self._cfg.spool_path)  # fmt: skip
                return True
            attempts += 1
            self._stats.retries += 1
            self._stats.last_error = result.detail
            delay = max(next(delays), result.retry_after or 0.0)
            self._log_retry(result, attempts, delay)
            self._stop.wait(delay)
        return False

    def _post(self, session: requests.Session, request: formats.Request) -> Result:
        headers = {} if request.content_type is None else {"Content-Type": request.content_type}
        try:
            resp = session.post(
                self._cfg.url.reveal(), data=request.body, headers=headers,
                timeout=self._cfg.timeout, allow_redirects=False,
            )  # fmt: skip
            with resp:
                status = resp.status_code
                body = resp.text if 400 <= status < 500 else ""
                return classify(status, resp.headers.get("Retry-After"), body)
        except requests.Timeout:
            return Result(Outcome.RETRY, None, f"no answer within {self._cfg.timeout:g}s")
        except requests.RequestException as err:
            return Result(Outcome.RETRY, None, self._scrub(describe(err)))

    def _scrub(self, text: str) -> str:
        """Error text without the secret URL: requests puts its path and query in messages."""
        url = self._cfg.url.reveal()
        text = text.replace(url, self._cfg.where)
        parts = url.split("://", 1)[-1].split("/", 1)
        if len(parts) == 2 and len(parts[1]) > 0:
            text = text.replace("/" + parts[1], "/<path>")
        return text[:300]

    def _record_ok(self, count: int, attempts: int) -> None:
        self._stats.sent += count
        self._stats.batches_ok += 1
        self._stats.last_success_ns = time.time_ns()
        if attempts:
            log.info("delivered to %s after %d retries", self._cfg.where, attempts)

    def _log_retry(self, result: Result, attempts: int, delay: float) -> None:
        ok, held = self._limiter.allow("retry")
        if ok:
            log.warning("send to %s failed (%s); attempt %d, retrying in %.1fs%s",
                        self._cfg.where, result.detail, attempts, delay,
                        f" ({held} similar suppressed)" if held else "")  # fmt: skip
