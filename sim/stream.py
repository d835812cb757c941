"""The simulated board's stream mode: the firmware's rates, limits and frames (pure, no I/O).

Everything here mirrors firmware/powmon/stream.h, so that a host tested against the simulator
meets the same answers, limits and bytes on a real board: the sample period the timer can
count, the samples per frame, the highest rate per mode, and the frame layout (docs/
firmware.md, "Stream mode"). Time is the device's own, in microseconds; the caller converts.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from powmon.sim.signal import ADC_BUDGET, Signal

SYNC: Final = 0xA5
MAX_PER_FRAME: Final = 16
FLAG_RMS: Final = 0x40
FLAG_MEAN: Final = 0x80
SCALE: Final = 64
WIRE_PERCENT: Final = 95  # frames may fill this much of the UART
FRAME_MS: Final = 10  # a frame carries about this much time, when the wire allows
_HEADER: Final = struct.Struct("<BBHI")


F_CPU: Final = 16_000_000


def line_baud(baud: int) -> int:
    """The rate a stream may count on: the slower of `baud` and the UART's real rate, which the
    Arduino core rounds (double speed, 16 MHz): 115200 is really 117647, 230400 only 222222."""
    real = F_CPU // 8 // ((F_CPU // 4 // baud - 1) // 2 + 1) if baud <= F_CPU // 8 else baud
    return min(real, baud)


def wire_max_hz(baud: int) -> int:
    """The highest rate the UART carries in 16-sample frames (42 bytes per 16 samples)."""
    return line_baud(baud) * WIRE_PERCENT * MAX_PER_FRAME // 42000


def max_hz(baud: int, avg: int, ac: tuple[int, int] | None, adc_rate: int = ADC_BUDGET) -> int:
    """The highest `stream HZ` for these settings: ADC budget or AC window, and the wire."""
    adc = ac[0] // ac[1] if ac is not None else adc_rate // avg
    return min(adc, wire_max_hz(baud))


def frame_size(hz: int, baud: int) -> int:
    """Samples per frame: about 10 ms worth, more when the wire needs longer frames; 1..16."""
    n = min(max(hz * FRAME_MS // 1000, 1), MAX_PER_FRAME)
    budget = line_baud(baud) * WIRE_PERCENT
    while n < MAX_PER_FRAME and hz * (10 + 2 * n) * 1000 > budget * n:
        n += 1
    return n


def period_us(hz: int) -> int:
    """The sample period Timer1 can count: whole us (hz >= 31), 4 us (4..30), 16 us (1..3)."""
    period = (1_000_000 + hz // 2) // hz
    if hz >= 31:
        return period
    step = 4 if hz >= 4 else 16
    return (period + step // 2) // step * step


def encode_frame(seq: int, t_us: int, values: list[int], flags: int) -> bytes:
    """One frame: sync, count | flags, seq (low 16 bits), micros (low 32), values, CRC."""
    body = _HEADER.pack(SYNC, len(values) | flags, seq & 0xFFFF, t_us & 0xFFFFFFFF)
    body += struct.pack(f"<{len(values)}H", *values)
    return body + binascii.crc_hqx(body, 0).to_bytes(2, "big")


class Streamed(NamedTuple):
    """A sample the board sent in an intact frame: what a correct host may store."""

    stream: int
    seq: int
    device_us: int
    raw: float


class Frame(NamedTuple):
    """A frame ready at device time `ready_us`, with the samples it carries."""

    ready_us: float
    data: bytes
    samples: list[Streamed]


# (device time of the sample in us) -> (value in 1/64 counts)
Acquire = Callable[[int], int]


def acquisition(
    signal: Signal,
    avg: int,
    ac: tuple[int, int] | None,
    adc_rate: int,
    host_time: Callable[[float], float],
) -> tuple[int, float, Acquire]:
    """Frame flags, the time one sample takes (us) and how to take it, per mode.

    A DC sample is the mean of `avg` conversions 1/adc_rate apart (exact in 1/64 counts when
    avg divides 64, as on the board); an AC sample the RMS over the whole-cycle window.
    """
    if ac is not None:
        hz, cycles = ac

        def window(t: int) -> int:
            return round(signal.rms(host_time(t), hz, cycles) * SCALE)

        return FLAG_RMS, cycles / hz * 1e6, window
    step = 1.0 / adc_rate

    def mean(t: int) -> int:
        start = host_time(t)
        total = sum(signal.sample(start + i * step) for i in range(avg))
        return (total * SCALE + avg // 2) // avg

    return (FLAG_MEAN if avg > 1 else 0), avg * step * 1e6, mean


@dataclass
class SimStream:
    """One running stream: samples on the timer's ticks, frames when their last sample is done.

    Sample k is taken at `start_us + (k + 1) * period` (the timer's first tick comes one
    period after the start) and is done `acquire_us` later (K conversions, or the AC window).
    """

    number: int
    hz: int
    period: int
    per_frame: int
    flags: int
    start_us: int
    acquire_us: float
    acquire: Acquire
    next_seq: int = 0
    _pending: list[Streamed] = field(default_factory=list)

    def tick_us(self, seq: int) -> int:
        return self.start_us + (seq + 1) * self.period

    def next_ready_us(self) -> float:
        """When the next frame will be complete (its last sample done)."""
        last = self.next_seq - len(self._pending) + self.per_frame - 1
        return self.tick_us(last) + self.acquire_us

    def due(self, now_us: float) -> list[Frame]:
        """The frames complete by `now_us`, in order."""
        frames: list[Frame] = []
        while self.tick_us(self.next_seq) + self.acquire_us <= now_us:
            self._take()
            if len(self._pending) == self.per_frame:
                frames.append(self._pack(self.tick_us(self.next_seq - 1) + self.acquire_us))
        return frames

    def stop(self, now_us: float) -> tuple[list[Frame], int]:
        """End the stream at `now_us`: the frames still due, a last short one, the count.

        A sample still being converted is dropped, as on the board; the count is how many
        samples the stream numbered (0..count-1).
        """
        frames = self.due(now_us)
        if self._pending:
            frames.append(self._pack(now_us))
        return frames, self.next_seq

    def _take(self) -> None:
        seq = self.next_seq
        t = self.tick_us(seq)
        value = self.acquire(t)
        self._pending.append(Streamed(self.number, seq, t, value / SCALE))
        self.next_seq += 1

    def _pack(self, ready_us: float) -> Frame:
        samples, self._pending = self._pending, []
        values = [round(s.raw * SCALE) for s in samples]
        data = encode_frame(samples[0].seq, samples[0].device_us, values, self.flags)
        return Frame(ready_us, data, samples)
