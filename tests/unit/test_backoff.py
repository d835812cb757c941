"""Retry delays grow, cap, jitter, and a bounded retry loop ends."""

from __future__ import annotations

import itertools

import pytest

from powmon.common.backoff import backoff


def test_delays_grow_and_cap() -> None:
    """Delays double from initial up to the cap, never beyond cap*(1+jitter)."""
    delays = list(itertools.islice(backoff(initial=0.1, cap=1.0, jitter=0.0), 8))
    assert delays[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert max(delays) == pytest.approx(1.0)


def test_jitter_stays_within_bounds() -> None:
    """Jitter adds at most the given fraction."""
    for delay in itertools.islice(backoff(initial=1.0, cap=1.0, jitter=0.5), 200):
        assert 1.0 <= delay <= 1.5


def test_bounded_retries_succeed_or_exhaust() -> None:
    """A loop over backoff(attempts=N) tries N times, and stops early on success."""
    tries = 0
    for _ in backoff(initial=0.001, attempts=5):
        tries += 1
        if tries == 3:
            break
    assert tries == 3
    assert len(list(backoff(initial=0.001, attempts=4))) == 4


def test_bad_parameters_are_refused() -> None:
    """A zero or negative delay would turn a retry loop into a busy loop."""
    with pytest.raises(ValueError, match="initial"):
        next(backoff(initial=0))
