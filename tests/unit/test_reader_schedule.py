"""Deadline-based polling: POLLING_DELAY is a period on a fixed grid, not a pause."""

from __future__ import annotations

import pytest

from powmon.readers.schedule import Schedule


def test_zero_period_never_waits() -> None:
    """POLLING_DELAY 0 polls as fast as the link allows: no wait, no skipped slots."""
    s = Schedule(0.0, start=100.0)
    for now in (100.0, 100.0, 100.5, 99.0):
        assert s.delay(now) == 0.0
        s.advance(now)
    assert s.skipped == 0


def test_slow_answers_eat_into_the_wait_instead_of_adding_to_it() -> None:
    """Requests stay on the grid start + k*P whatever the answer took (no drift)."""
    s = Schedule(1.0, start=10.0)
    assert s.delay(10.0) == 0.0
    s.advance(10.0)
    # The answer took 0.3 s: the next request is due 0.7 s later, at 11.0, not at 11.3.
    assert s.delay(10.3) == pytest.approx(0.7)
    assert s.delay(11.0) == 0.0
    s.advance(11.0)
    assert s.delay(11.9) == pytest.approx(0.1)


def test_a_late_request_goes_at_once_then_the_grid_resumes() -> None:
    """Late by less than a period: one request at once, then back on the original phase."""
    s = Schedule(1.0, start=0.0)
    s.advance(0.0)
    assert s.delay(1.4) == 0.0
    s.advance(1.4)
    assert s.delay(1.4) == pytest.approx(0.6)
    assert s.skipped == 0


def test_missed_slots_are_skipped_and_counted_not_fired_in_a_burst() -> None:
    """After a long stall only one request is due, the phase is kept and missed slots counted."""
    s = Schedule(1.0, start=0.0)
    s.advance(0.0)
    s.advance(5.5)  # the request due at 1.0 went out at 5.5 (a long timeout)
    assert s.skipped == 4  # slots 2.0, 3.0, 4.0 and 5.0 are gone
    assert s.delay(5.5) == pytest.approx(0.5)  # next on the grid: 6.0
    s.advance(6.0)
    assert s.delay(6.0) == pytest.approx(1.0)


def test_restart_begins_a_new_grid() -> None:
    """After a reconnect the old phase means nothing: the first request is due at once."""
    s = Schedule(2.0, start=0.0)
    s.advance(0.0)
    s.restart(50.3)
    assert s.delay(50.3) == 0.0
    s.advance(50.3)
    assert s.delay(50.3) == pytest.approx(2.0)


def test_negative_period_is_refused() -> None:
    """A negative period is a bug upstream (settings validate POLLING_DELAY >= 0)."""
    with pytest.raises(ValueError, match="period"):
        Schedule(-1.0)
