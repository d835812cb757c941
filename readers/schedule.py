"""When to send the next request: deadline-based, so POLLING_DELAY is a period, not a pause.

The original script slept POLLING_DELAY after each reading, so the real period was the delay
plus the round trip plus Python's overhead, and drifted with load. Here readings are due at
start, start + P, start + 2P, ...; a slow answer eats into the wait instead of adding to it.
When the reader falls behind by more than a period (a long timeout, a loaded machine), the
missed slots are skipped and counted rather than fired in a burst, and the phase is kept.
"""

from __future__ import annotations


class Schedule:
    """Due times on a fixed grid of `period` seconds (monotonic clock); 0 means 'no wait'."""

    __slots__ = ("_next", "_period", "skipped")

    def __init__(self, period: float, start: float = 0.0) -> None:
        if period < 0:
            raise ValueError(f"period must be >= 0, got {period}")
        self._period = period
        self._next = start
        self.skipped = 0

    @property
    def period(self) -> float:
        return self._period

    def restart(self, now: float) -> None:
        """Start a new grid at `now` (after a (re)connect, the old phase means nothing)."""
        self._next = now

    def delay(self, now: float) -> float:
        """Seconds to wait before the next request is due; 0.0 when it is due now."""
        return max(0.0, self._next - now) if self._period else 0.0

    def advance(self, now: float) -> None:
        """Record that a request went out at `now` and move to the next due time."""
        period = self._period
        if not period:
            return
        self._next += period
        if self._next <= now:  # the slots up to now passed while this request waited
            missed = int((now - self._next) // period) + 1
            self._next += missed * period
            self.skipped += missed
