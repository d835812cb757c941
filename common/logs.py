"""Logging set-up shared by every process: one format, LOG_LEVEL 0-3, colour only on a TTY.

LOG_LEVEL keeps the original script's meaning: 0 quiet (warnings and errors only), 1 per-sensor
status, 2 payloads (each reading), 3 both. Payload lines go to their own logger, PAYLOAD_LOGGER,
so that level 2 can show readings without the status chatter. Files and rotation belong to
supervisord or journald; PowMon writes to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Final, TextIO

PAYLOAD_LOGGER: Final = "powmon.payload"

# LOG_LEVEL -> (root level, payload level)
_LEVELS: Final = {
    0: (logging.WARNING, logging.WARNING),
    1: (logging.INFO, logging.WARNING),
    2: (logging.WARNING, logging.DEBUG),
    3: (logging.DEBUG, logging.DEBUG),
}
_COLOURS: Final = {
    logging.DEBUG: "\033[36m",
    logging.INFO: "\033[32m",
    logging.WARNING: "\033[33m",
    logging.ERROR: "\033[31m",
    logging.CRITICAL: "\033[1;31m",
}
_RESET: Final = "\033[0m"


class _Formatter(logging.Formatter):
    """'ts level proc[pid] message', UTC, with the level coloured when asked to."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime(datefmt or "%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))

    def __init__(self, proc: str, colour: bool) -> None:
        super().__init__(
            fmt=f"%(asctime)s.%(msecs)03dZ %(levelname)-7s {proc}[%(process)d] %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self._colour:
            return f"{_COLOURS.get(record.levelno, '')}{text}{_RESET}"
        return text


def _wants_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def configure_logging(log_level: int, proc: str, stream: TextIO | None = None) -> None:
    """Configure the root logger once, in main(); never at import time."""
    out = stream if stream is not None else sys.stderr
    root_level, payload_level = _LEVELS.get(log_level, _LEVELS[1])
    handler = logging.StreamHandler(out)
    handler.setFormatter(_Formatter(proc, _wants_colour(out)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(root_level, payload_level))
    # The root level admits payload lines; these two loggers then filter by their own level.
    logging.getLogger("powmon").setLevel(root_level)
    logging.getLogger(PAYLOAD_LOGGER).setLevel(payload_level)


SUPPRESSED_SUFFIX: Final = " (%d similar suppressed)"
OVERFLOW_KEY: Final = "(other)"


class RateLimiter:
    """Lets one message through per `period` per key, and counts what it held back.

    A flapping port or a stream of bad lines must not fill the disk with identical warnings;
    the count of suppressed lines is reported with the next one that passes. Keys may come
    from the outside world (a sensor id off the bus), so at most `max_keys` are tracked: past
    that, new keys share one OVERFLOW_KEY bucket and memory stays bounded.
    """

    def __init__(self, period: float = 10.0, max_keys: int = 1024) -> None:
        self._period = period
        self._max_keys = max(1, max_keys)
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._pruned_at = float("-inf")

    def allow(self, key: str) -> tuple[bool, int]:
        """Return (may log now, how many were suppressed since the last one logged)."""
        now = time.monotonic()
        key = self._bucket(key, now)
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._next[key] = now + self._period
        return True, self._held.pop(key, 0)

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: object) -> bool:
        """Log `msg % args` unless held back, with SUPPRESSED_SUFFIX when some were; True if
        it was logged. The arguments are only formatted when the line goes out."""
        ok, held = self.allow(key)
        if ok:
            if held:
                logger.log(level, msg + SUPPRESSED_SUFFIX, *args, held)
            else:
                logger.log(level, msg, *args)
        return ok

    def held(self) -> dict[str, int]:
        """Suppressed counts not yet reported, per key: for a last line at shutdown."""
        return dict(self._held)

    def _bucket(self, key: str, now: float) -> str:
        if key in self._next or len(self._next) < self._max_keys:
            return key
        if now >= self._pruned_at + self._period:  # at most one sweep per period: O(1) amortised
            self._pruned_at = now
            # Keys whose period is over and that hold nothing back would log at once anyway
            # the next time they come, so forgetting them loses nothing.
            for old in [k for k, t in self._next.items() if t <= now and k not in self._held]:
                del self._next[old]
        return key if len(self._next) < self._max_keys else OVERFLOW_KEY
