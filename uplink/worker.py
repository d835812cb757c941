"""The Worker: spool -> one output, with batching, retries, backoff and dead letters.

One Worker thread per output (HTTP, MQTT), written once for all of them: the output only
encodes, sends and classifies (contract.py). Why threads and not processes or an event loop:
the uplink process is already the unit of isolation from sampling (readers never wait for
it), and inside it one blocking call on a thread of its own is the simplest thing that keeps
the receive loop and the other outputs free. Each Worker has its own SQLite connection and
position in the spool (positions.py), its own counters and backoff, and shares nothing with
the others but the spool file: one output down never holds back another. A Worker can be
abandoned at shutdown: what it has not acked is still in the spool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from powmon.common.backoff import backoff
from powmon.common.errors import UplinkError
from powmon.common.logs import RateLimiter
from powmon.uplink.contract import Answer, Output, Wait
from powmon.uplink.positions import Position
from powmon.uplink.spool import Spool, Spooled

log = logging.getLogger(__name__)

POLL_S: Final = 0.2
ACK_EVERY_S: Final = 0.5  # delivered rows are acked in the spool at least this often
REFRESH_S: Final = 0.5  # the output's depth and drops in its counters: at most this stale
REFUSED_BACKOFF_FACTOR: Final = 10.0  # refused outputs retry from backoff_max up to 10x it


@dataclass
class OutputStats:
    """One output's counters (one writer: its Worker). `state`: starting, running, retrying
    (a passing failure, backing off) or refused (credentials or address refused; `reason`)."""

    state: str = "starting"
    reason: str = ""
    spool_depth: int = 0
    sent: int = 0
    batches_ok: int = 0
    retries: int = 0
    dead_lettered: int = 0
    dropped_over_cap: int = 0
    last_success_ns: int = 0
    last_error: str = ""

    def counters(self) -> dict[str, Any]:
        return {
            "state": self.state, "reason": self.reason, "spool_depth": self.spool_depth,
            "sent": self.sent, "batches_ok": self.batches_ok, "retries": self.retries,
            "dead_lettered": self.dead_lettered, "dropped_over_cap": self.dropped_over_cap,
            "last_success_ns": self.last_success_ns, "last_error": self.last_error,
        }


class Worker:
    """Takes batches from the spool at the output's position and delivers them until stopped."""

    def __init__(self, output: Output[Any], spool_path: Path, spool_max: int) -> None:
        self.output = output
        self.stats = OutputStats()
        self._spool_path = spool_path
        self._spool_max = spool_max
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._limiter = RateLimiter(10.0)
        self._thread: threading.Thread | None = None
        self._delays = self._retry_delays()
        self._refused_delays = self._long_delays()
        self.failed: UplinkError | None = None
        # The receive loop's pokes count the rows it committed; the thread is woken only once
        # `_need` of them came (a batch is full), or its own deadline (the batch wait) passes.
        self._poke_lock = threading.Lock()
        self._added = 0
        self._need = 1
        # Rows delivered but not acked in the spool yet (acked per batch, at most ACK_EVERY_S
        # late: a crash meanwhile sends them again, which at-least-once allows).
        self._unacked: list[int] = []
        self._unacked_since = 0.0
        self._refreshed = -REFRESH_S

    # --- lifecycle (called from the uplink's main thread) --------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name=f"uplink-{self.output.name}", daemon=True
        )
        self._thread.start()

    def poke(self, added: int | None = None) -> None:
        """`added` new readings are in the spool (committed); None: some, wake up and look."""
        with self._poke_lock:
            self._added += self._need if added is None else added
            wake = self._added >= self._need
        if wake and not self._wake.is_set():
            self._wake.set()

    def check(self) -> None:
        """Raise UplinkError if the thread ended on its own (the process should exit 1)."""
        if self.failed is not None:
            raise UplinkError(f"output {self.output.name} stopped: {self.failed}") from self.failed
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            # An unexpected exception; threading.excepthook has printed its traceback.
            raise UplinkError(f"output {self.output.name} died; see the traceback above")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.output.interrupt()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` for the thread; False if a delivery is still in flight."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # --- the thread ----------------------------------------------------------------------

    def run(self) -> None:
        """Thread body. A spool failure ends the thread; the main loop sees `failed`."""
        try:
            spool = Spool(self._spool_path, self._spool_max)
        except UplinkError as err:
            self.failed = err
            return
        try:
            position = Position(spool, self.output.name)
            self.output.open()
            self.stats.state = "running"
            while not self._stop.is_set():
                self._refresh(position)
                rows = self._next_batch(position)
                if rows:
                    self._deliver(position, rows)
        except UplinkError as err:
            self.failed = err
        finally:
            try:
                if self._unacked and self.failed is None:
                    self._flush(position)
            except UplinkError as err:
                self.failed = err
            finally:
                self.output.close()
                spool.close()

    def _refresh(self, position: Position, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._refreshed >= REFRESH_S:
            self._refreshed = now
            self.stats.spool_depth = position.depth()
            self.stats.dropped_over_cap = position.dropped()

    def _next_batch(self, position: Position) -> list[Spooled]:
        """Wait until a full batch is ready or the oldest reading waited the output's batch
        wait; then the batch (empty if stopped)."""
        size, wait = self.output.batch_size, self.output.batch_wait
        while not self._stop.is_set():
            with self._poke_lock:  # count the pokes from here: the query below sees the rest
                self._added, self._need = 0, 1
            self._wake.clear()
            count, oldest_ns = position.oldest(size)
            timeout = POLL_S
            if oldest_ns is not None:
                waited = (time.time_ns() - oldest_ns) / 1e9
                # A negative wait means the wall clock went back: send rather than stall.
                if count >= size or waited >= wait or waited < 0:
                    return position.pending(size)
                # Sleep until the batch wait is over or the batch is full, not at every
                # commit of the receive loop (that would be a spool query per commit).
                timeout = wait - waited
                with self._poke_lock:
                    self._need = size - count
                    if self._added >= self._need:
                        continue
            else:
                self._idle(position)
            self._refresh(position)
            self._wake.wait(timeout)
        return []

    def _idle(self, position: Position) -> None:
        """Nothing pending: let the output keep its connection, and report a refusal (or the
        end of one) it met doing so; passing failures stay the output's own business."""
        answer = self.output.idle()
        if answer is None:
            return
        if answer.wait is Wait.REFUSED:
            self._apply(position, answer)
            self._pause(position, answer)
        elif answer.wait is Wait.NONE and self.stats.state in ("refused", "retrying"):
            self._set_state("running", "")

    def _deliver(self, position: Position, rows: Sequence[Spooled]) -> None:
        """Deliver `rows` until each is done or dead, or the Worker is stopped."""
        queue = deque(self._encode(position, rows))
        while queue and not self._stop.is_set():
            answer = self.output.send(queue.popleft())
            self._apply(position, answer)
            if answer.again:
                again = [req for group in answer.again for req in self._encode(position, group)]
                queue.extendleft(reversed(again))
            self._pause(position, answer)
        self._flush(position)  # before the next batch is read: acked rows are not pending

    def _flush(self, position: Position) -> None:
        """Ack the rows delivered since the last flush, in one transaction."""
        if self._unacked:
            done, self._unacked = self._unacked, []
            position.ack(done)

    def _encode(self, position: Position, rows: Sequence[Spooled]) -> list[Any]:
        encoded = self.output.encode(rows)
        for row_id, why in encoded.rejected:
            self.stats.dead_lettered += position.dead_letter([row_id], None, why)
            self._limiter.log(log, logging.ERROR, "unsendable",
                              "output %s: a reading cannot be sent, moved to dead letter: %s",
                              self.output.name, why)
        return encoded.requests

    def _apply(self, position: Position, answer: Answer) -> None:
        name = self.output.name
        if answer.done:
            if not self._unacked:
                self._unacked_since = time.monotonic()
            self._unacked += answer.done
            if time.monotonic() - self._unacked_since >= ACK_EVERY_S:
                self._flush(position)
            self.stats.sent += len(answer.done)
            self.stats.batches_ok += 1
            self.stats.last_success_ns = time.time_ns()
        for dead in answer.dead:
            moved = position.dead_letter(dead.ids, dead.status, dead.reason)
            self.stats.dead_lettered += moved
            self.stats.last_error = dead.reason
            self._limiter.log(log, logging.ERROR, "refused-rows",
                              "output %s: %s refused %d readings (%s); moved to dead letter in %s",
                              name, self.output.where, moved, dead.reason,
                              position.spool.path)
        if answer.wait is Wait.RETRY:
            self.stats.retries += 1
            self.stats.last_error = answer.detail
            self._set_state("retrying", "")
        elif answer.wait is Wait.REFUSED:
            self.stats.last_error = answer.detail
            self._set_state("refused", answer.detail)
        elif answer.done:
            self._set_state("running", "")

    def _set_state(self, state: str, reason: str) -> None:
        before = self.stats.state
        self.stats.state, self.stats.reason = state, reason
        name, where = self.output.name, self.output.where
        if state == "refused" and before != "refused":
            log.error("output %s: %s refused this output (%s); readings stay spooled, retrying "
                      "every %.0fs at most", name, where, reason,
                      self.output.backoff_max * REFUSED_BACKOFF_FACTOR)
        elif state == "running" and before in ("refused", "retrying"):
            log.info("output %s: delivering to %s again", name, where)
        if state == "running" and before != "running":  # not once per request
            self._delays = self._retry_delays()
            self._refused_delays = self._long_delays()

    def _pause(self, position: Position, answer: Answer) -> None:
        if answer.wait is Wait.NONE:
            return
        if answer.wait is Wait.REFUSED:
            delay = next(self._refused_delays)
        else:
            delay = max(next(self._delays), answer.retry_after or 0.0)
            ok, held = self._limiter.allow("retry")
            if ok:
                log.warning("output %s: send to %s failed (%s); retry %d in %.1fs%s",
                            self.output.name, self.output.where, answer.detail,
                            self.stats.retries, delay,
                            f" ({held} similar suppressed)" if held else "")
        self._flush(position)  # what was delivered is not held back by the wait
        self._refresh(position, force=True)
        self._stop.wait(delay)

    def _retry_delays(self) -> Iterator[float]:
        cap = self.output.backoff_max
        return backoff(initial=min(0.5, cap), cap=cap)

    def _long_delays(self) -> Iterator[float]:
        cap = self.output.backoff_max
        return backoff(initial=cap, cap=cap * REFUSED_BACKOFF_FACTOR)
