"""The simulated current sensor: an ACS712's output, DC or on a mains sine, through a 10-bit ADC.

Pure: sample(t) is one conversion at simulated time t (seconds); mean() and rms() are what the
firmware makes of several conversions (`avg K`, `mode ac HZ CYCLES`).
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass
from typing import Final

VERSION: Final = "1.1.0"  # the sketch this simulator is: the newest, with stream mode
ADC_MAX: Final = 1023
ADC_RATE: Final = 9615.0  # samples/s of an AVR ADC at 16 MHz with the default /128 prescaler
ADC_BUDGET: Final = 7000  # conversions/s a stream may use on an Uno (firmware STREAM_ADC_BUDGET)
MAX_RMS_SAMPLES: Final = 20_000  # keeps one AC answer cheap even at 1 Hz x 100 cycles


@dataclass(frozen=True)
class SignalSpec:
    """What the simulated current sensor sees, and how the board converts it.

    `amps` is the DC current, or the RMS of a sine when `ac_hz` is set; `noise` is the standard
    deviation (amps) of gaussian noise added to every sample. The conversion constants match
    PowMon's default settings, so an idle sensor reads 512 and converts back to 0 A. The board:
    its clock runs `drift_ppm` fast (negative: slow), micros() starts at `micros0` after each
    boot, and a stream may use `adc_rate` conversions per second (an Uno's budget by default;
    raise it to let the wire be the only limit). `firmware` is the sketch it runs: "1.1.0"
    (streams), "1.0.0" (an `id` without capabilities, no stream mode) or "none" (the original
    protocol: only `read` and `r`).
    """

    amps: float = 0.0
    ac_hz: float | None = None
    noise: float = 0.0
    offset_v: float = 2.5
    sns: float = 0.066
    vref: float = 5.0
    seed: int | None = None
    boot_chatter: bool = True
    drift_ppm: float = 0.0
    micros0: int = 0
    adc_rate: int = ADC_BUDGET
    firmware: str = VERSION


class Signal:
    """Conversions of one sensor; noise is drawn from a seeded generator under `lock`."""

    def __init__(self, spec: SignalSpec, lock: threading.RLock) -> None:
        self.spec = spec
        self._lock = lock
        self._rng = random.Random(spec.seed)

    def sample(self, t: float) -> int:
        """One 10-bit ADC conversion of the sensor output at simulated time `t` (seconds)."""
        spec = self.spec
        if spec.ac_hz:
            amps = spec.amps * math.sqrt(2.0) * math.sin(2.0 * math.pi * spec.ac_hz * t)
        else:
            amps = spec.amps
        with self._lock:
            if spec.noise > 0:
                amps += self._rng.gauss(0.0, spec.noise)
        raw = round((spec.offset_v + amps * spec.sns) / spec.vref * 1024)
        return min(ADC_MAX, max(0, raw))

    def mean(self, t: float, count: int) -> float:
        return sum(self.sample(t + i / ADC_RATE) for i in range(count)) / count

    def rms(self, t: float, hz: float, cycles: int) -> float:
        """RMS deviation around the mean over whole mains cycles, as the firmware computes it."""
        per_cycle = max(8, min(round(ADC_RATE / hz), MAX_RMS_SAMPLES // cycles))
        n = per_cycle * cycles
        dt = 1.0 / (hz * per_cycle)
        samples = [self.sample(t + i * dt) for i in range(n)]
        mean = sum(samples) / n
        return math.sqrt(sum((s - mean) ** 2 for s in samples) / n)
