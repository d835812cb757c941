"""RateLimiter under any sequence of keys: every event is logged or counted, memory is bounded.

Keys can come from the outside world (a sensor id off the bus), so a flood of new keys must
not grow the limiter without bound, and no suppressed event may go unaccounted.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powmon.common.logs import OVERFLOW_KEY, SUPPRESSED_SUFFIX, RateLimiter
from tests.fuzz.strategies import fuzz


@fuzz(200)
@given(st.lists(st.text("abcdefgh", max_size=2), max_size=300), st.integers(1, 6))
def test_every_event_is_logged_reported_or_held_and_keys_stay_bounded(
    keys: list[str], max_keys: int
) -> None:
    """logged + reported as suppressed + still held == events; tracked keys <= max_keys + 1."""
    limiter = RateLimiter(period=3600.0, max_keys=max_keys)
    logged = reported = 0
    for key in keys:
        ok, held = limiter.allow(key)
        logged += ok
        reported += held
        assert len(limiter.held()) <= max_keys + 1
    assert logged + reported + sum(limiter.held().values()) == len(keys)
    assert logged <= max_keys + 1  # within one period: once per key, plus the shared bucket
    if len(set(keys)) > max_keys:
        assert OVERFLOW_KEY in limiter.held() or logged == max_keys + 1


def test_log_appends_the_suppressed_count_to_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The line after a quiet period says how many similar lines were held back."""
    log = logging.getLogger("powmon.test.ratelimit")
    limiter = RateLimiter(period=0.0)
    caplog.set_level(logging.WARNING, logger=log.name)
    assert limiter.log(log, logging.WARNING, "k", "bad line %s", "x")
    limiter = RateLimiter(period=3600.0)
    assert limiter.log(log, logging.WARNING, "k", "bad line %s", 1)
    assert not limiter.log(log, logging.WARNING, "k", "bad line %s", 2)
    assert not limiter.log(log, logging.WARNING, "k", "bad line %s", 3)
    limiter._next["k"] = 0.0  # the period is over (no sleeping in tests)
    assert limiter.log(log, logging.WARNING, "k", "bad line %s", 4)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad line x", "bad line 1", "bad line 4" + SUPPRESSED_SUFFIX % 2]
