"""Device time to UTC on synthetic streams whose true timing is known (no wall clock used).

A board samples every 10 ms on a crystal that runs `drift_ppm` fast; the host reads 1 to 5
samples at a time and each read returns after a random positive delay of up to 4 ms (USB),
with bursts of 5 to 40 ms more (a busy host). The error of a mapped timestamp is its
difference from the true UTC of the sample, which the test knows exactly.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from itertools import pairwise

import pytest

from powmon.readers.clock import STEP_NS, DeviceClock

T0 = 1_764_000_000_000_000_000  # a UTC instant in ns
LATENCY_NS = 4_000_000
PERIOD_US = 10_000


@dataclass
class Run:
    """What one synthetic stream produced: (true time s, error ns) per sample, the clock."""

    clock: DeviceClock
    errors: list[tuple[float, int]] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)

    def worst(self, start: float, end: float = float("inf")) -> int:
        return max(abs(e) for t, e in self.errors if start <= t < end)


def stream(
    drift_ppm: float,
    seconds: float = 90.0,
    seed: int = 1,
    bursts: bool = True,
    host_step: tuple[float, int] | None = None,
    device_reset_at: float | None = None,
    delay_ns: int = 0,
) -> Run:
    """Feed a DeviceClock one synthetic stream; see the module docstring."""
    rng = random.Random(seed)
    run = Run(DeviceClock(delay_ns=delay_ns))
    k = 0
    burst_until = -1.0
    step = 0
    boot_us = 0  # device time of the last reset, in the first boot's time base
    while k * PERIOD_US < seconds * 1e6:
        n = rng.randint(1, 5)
        chunk = [(k + i) * PERIOD_US for i in range(n)]
        k += n
        now = chunk[-1] / 1e6
        if host_step is not None and now >= host_step[0]:
            step, host_step = host_step[1], None
        if device_reset_at is not None and now >= device_reset_at:
            boot_us, device_reset_at = chunk[0], None
        if bursts and rng.random() < 0.01:
            burst_until = now + 0.3
        delay = rng.uniform(0, LATENCY_NS) + (rng.uniform(5e6, 40e6) if now < burst_until else 0)
        host = _utc(chunk[-1], drift_ppm) + delay_ns + int(delay) + step
        stamped = run.clock.stamp([d - boot_us for d in chunk], host)
        for d, utc in zip(chunk, stamped, strict=True):
            run.errors.append((d / 1e6, utc - _utc(d, drift_ppm) - step))
        run.stamps += stamped
    return run


def _utc(device_us: int, drift_ppm: float) -> int:
    """True UTC of a device time: a fast crystal counts more us per real second."""
    return T0 + int(device_us * 1000 / (1 + drift_ppm * 1e-6))


def increasing(values: list[int]) -> bool:
    return all(b > a for a, b in pairwise(values))


@pytest.mark.parametrize("drift_ppm", [0.0, 100.0, -100.0])
def test_error_stays_far_below_the_latency(drift_ppm: float) -> None:
    """With up to 4 ms of delay and bursts of 40 ms, a timestamp is never off by more than one
    read's delay, and after 10 s by less than an eighth of it; the drift is found to 5 ppm."""
    run = stream(drift_ppm)
    assert run.worst(0.0) <= LATENCY_NS
    assert run.worst(10.0) <= LATENCY_NS / 8
    late = [e for t, e in run.errors if t >= 10.0]
    assert statistics.pstdev(late) <= LATENCY_NS / 40  # jitter: tens of us, not ms
    assert run.clock.drift_ppm == pytest.approx(drift_ppm, abs=5.0)
    assert increasing(run.stamps)


@pytest.mark.parametrize("drift_ppm", [5000.0, -5000.0])
def test_a_ceramic_resonator_is_tracked_too(drift_ppm: float) -> None:
    """An Uno's resonator can be 0.5% off: after 10 s the error is as small as for a crystal."""
    run = stream(drift_ppm, seconds=40.0, seed=2)
    assert run.worst(10.0) <= LATENCY_NS / 8
    assert run.clock.drift_ppm == pytest.approx(drift_ppm, abs=5.0)


def test_timestamps_are_strictly_increasing_through_a_host_clock_step_back() -> None:
    """The host clock jumps back 1 s: no timestamp goes back, and within 1.5 s the mapping
    follows the new clock as closely as before."""
    run = stream(100.0, seconds=40.0, host_step=(20.0, -1_000_000_000))
    assert increasing(run.stamps)
    assert run.worst(21.5) <= LATENCY_NS / 8
    assert run.clock.counters.steps == 1


def test_held_timestamps_stay_distinct_at_the_csvs_microsecond() -> None:
    """While a correction holds the output back (the host clock stepped back 1 s), stamps
    still differ by at least 1 us: stored rows, written to the microsecond, stay strictly
    increasing too, not equal."""
    run = stream(100.0, seconds=25.0, host_step=(20.0, -1_000_000_000))
    assert all(b // 1000 > a // 1000 for a, b in pairwise(run.stamps))


def test_a_host_clock_step_forward_is_followed() -> None:
    """The host clock jumps 1 s ahead: after a few seconds (not a burst of delay) the
    mapping follows it."""
    run = stream(100.0, seconds=40.0, host_step=(20.0, 1_000_000_000))
    assert increasing(run.stamps)
    assert run.worst(23.0) <= LATENCY_NS / 8
    assert run.clock.counters.steps == 1


def test_bursts_shorter_than_a_step_are_not_steps() -> None:
    """Delays of up to 40 ms for 0.3 s (STEP_NS is larger) never count as a clock jump."""
    assert STEP_NS > 40_000_000
    run = stream(-100.0, seconds=60.0, seed=5)
    assert run.clock.counters.steps == 0


def test_a_device_reset_starts_the_estimate_again() -> None:
    """The device clock restarts (device time goes back): the offset is found again at once,
    the drift is kept, the output stays increasing."""
    run = stream(100.0, seconds=60.0, device_reset_at=30.0)
    assert run.clock.counters.resets == 1
    assert increasing(run.stamps)
    assert run.worst(31.0) <= LATENCY_NS / 8 + 100_000
    assert run.worst(40.0) <= LATENCY_NS / 8


def test_a_reset_inside_one_read_is_split() -> None:
    """A read holding samples before and after a device reset maps each part on its own."""
    clock = DeviceClock()
    for i in range(1, 200):
        clock.observe(i * 10_000, T0 + i * 10_000_000)
    stamped = clock.stamp([1_990_000, 2_000_000, 5_000, 15_000], T0 + 2_000_000_000 + 15_000_000)
    assert clock.counters.resets == 1
    assert stamped[1] == pytest.approx(T0 + 2_000_000_000, abs=1000)
    assert stamped[3] == pytest.approx(T0 + 2_000_000_000 + 15_000_000, abs=1000)
    assert increasing(stamped)


def test_a_known_delay_is_taken_off() -> None:
    """A constant delay the host knows (a frame's wire time) does not make timestamps late."""
    run = stream(0.0, seconds=30.0, delay_ns=3_600_000)
    assert run.worst(10.0) <= LATENCY_NS / 8
