"""The simulated board's stream mode: commands, limits, device clock, faults (pure, fake clock)."""

from __future__ import annotations

import math
import re
from itertools import pairwise

import pytest

from powmon.readers.frames import FrameDecoder, Sample
from powmon.sim.device import BOOT_CHATTER, Fault, SignalSpec, SimDevice


class Clock:
    """A host clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def board(**spec: object) -> tuple[SimDevice, Clock]:
    clock = Clock()
    return SimDevice(SignalSpec(**spec), "T", clock=clock), clock  # type: ignore[arg-type]


def collect(device: SimDevice, clock: Clock, seconds: float, step: float = 0.01) -> bytes:
    """Advance the clock by `seconds`, returning everything the board sent on its own.

    At R Hz, sample k is taken (k + 1) / R after `stream` and ready one conversion later
    (1/7000 s), so R samples need a little more than 1 s.
    """
    end = clock.now + seconds
    out = b""
    while clock.now < end:
        clock.now = min(clock.now + step, end)
        out += b"".join(data for _, data in device.poll())
    return out


@pytest.mark.parametrize(
    ("hz", "baud", "period", "per_frame"),
    [
        (1, 115200, 1_000_000, 1),
        (3, 115200, 333_328, 1),
        (30, 115200, 33_332, 1),
        (100, 115200, 10_000, 1),
        (300, 115200, 3_333, 3),
        (1000, 115200, 1000, 10),
        (4000, 115200, 250, 16),
        (200, 9600, 5000, 4),
        (50, 9600, 20_000, 1),
    ],
)
def test_stream_answer_gives_the_timer_period_and_frame_size(
    hz: int, baud: int, period: int, per_frame: int
) -> None:
    """The period is what Timer1 can count (1, 4 or 16 us steps); a frame holds ~10 ms of
    samples, more when the wire needs longer frames. The same rules as the firmware's."""
    device, _ = board()
    device.baud = baud
    assert device.feed(b"stream %d\n" % hz) == b"ok stream %d %d %d\r\n" % (hz, period, per_frame)


@pytest.mark.parametrize(
    ("setup", "baud", "limit"),
    [
        (b"", 115200, 4169),
        (b"", 1_000_000, 7000),
        (b"avg 8\n", 115200, 875),
        (b"mode ac 50 5\n", 115200, 10),
        (b"mode ac 60 1\n", 115200, 60),
        (b"", 9600, 347),
    ],
)
def test_rates_beyond_the_adc_the_window_or_the_wire_are_refused_with_the_limit(
    setup: bytes, baud: int, limit: int
) -> None:
    """`err max M` names the highest rate for the mode and the baud rate; M itself works."""
    device, _ = board()
    device.baud = baud
    device.feed(setup)
    assert device.feed(b"stream %d\n" % (limit + 1)) == b"err max %d\r\n" % limit
    assert device.feed(b"stream %d\n" % limit).startswith(b"ok stream %d " % limit)


@pytest.mark.parametrize(
    "bad",
    [
        b"stream\n",
        b"stream 0\n",
        b"stream x\n",
        b"stream 10 6\n",
        b"stream 10 1 2\n",
        b"stream 70000\n",
        b"stop 1\n",
    ],
)
def test_bad_stream_requests_answer_err(bad: bytes) -> None:
    """A rate must be a whole number >= 1, the channel 0..5."""
    device, _ = board()
    assert device.feed(bad) == b"err\r\n"
    assert not device.streaming


def test_frames_follow_the_device_clock_and_stop_counts_them() -> None:
    """Samples come one period apart by the board's clock; `stop` sends what is done and the
    count; an idle `stop` answers 0."""
    device, clock = board(amps=1.0, boot_chatter=False)
    assert device.feed(b"stop\n") == b"ok stop 0\r\n"
    decoder = FrameDecoder()
    got = decoder.feed(device.feed(b"stream 200\n"))
    got += decoder.feed(collect(device, clock, 1.0))
    clock.now += 0.0123
    tail = device.feed(b"stop\n")
    got += decoder.feed(tail)
    count = int(re.search(rb"ok stop (\d+)\r\n\Z", tail).group(1))  # type: ignore[union-attr]
    assert [s.seq for s in got] == list(range(count))
    assert count == 202  # 1.0123 s at 200 Hz: ticks at 5 ms, 10 ms, ...
    assert [s.device_us for s in got] == [5000 * (k + 1) for k in range(count)]
    assert not device.streaming


def test_a_drifting_clock_counts_more_microseconds() -> None:
    """drift=+500 ppm: in 10 host seconds the board's clock advances 10.005 s."""
    device, clock = board(drift_ppm=500.0)
    start = device.micros(clock.now)
    clock.now += 10.0
    assert device.micros(clock.now) - start == pytest.approx(10_005_000, abs=1)
    assert device.host_time(device.micros(clock.now)) == pytest.approx(clock.now)


def test_any_request_ends_the_stream_first() -> None:
    """`read` while streaming: the last frames, `ok stop N`, then the reading, as the firmware."""
    device, clock = board(amps=2.5, boot_chatter=False)
    device.feed(b"stream 100\n")
    clock.now += 0.05  # the sample of the 50 ms tick is still converting: it is dropped
    answer = device.feed(b"read\n")
    assert answer.endswith(b"ok stop 4\r\n546\r\n")
    assert not device.streaming
    assert device.feed(b"\n") == b""  # a blank line asks nothing


def test_a_blank_line_does_not_end_the_stream() -> None:
    """Only a request ends the stream; a bare line end is not one."""
    device, _ = board()
    device.feed(b"stream 100\n")
    assert device.feed(b"\r\n") == b""
    assert device.streaming


def test_avg_and_ac_apply_per_sample() -> None:
    """With `avg 4` each sample is a flagged mean; in `mode ac 50 5` an RMS over 5 cycles."""
    device, clock = board(amps=2.0, ac_hz=50.0)
    decoder = FrameDecoder()
    means = decoder.feed(device.feed(b"avg 4\nstream 100\n") + collect(device, clock, 0.201))
    assert len(means) == 20
    assert all(s.flags == 4 and s.raw * 64 == int(s.raw * 64) for s in means)
    device.feed(b"mode ac 50 5\n")
    decoder = FrameDecoder()
    rms = decoder.feed(device.feed(b"stream 10\n") + collect(device, clock, 1.0))
    expected = 2.0 * 0.066 / 5.0 * 1024
    assert len(rms) == 9
    assert all(s.flags == 2 and s.raw == pytest.approx(expected, rel=0.02) for s in rms)


def test_stream_faults_spoil_frames_not_the_record() -> None:
    """corrupt, dropbytes and dropframe spoil the next frames; `streamed` lists only the
    samples of intact frames, which are exactly what a decoder returns."""
    device, clock = board(amps=1.0, noise=0.1, seed=2, boot_chatter=False)
    decoder = FrameDecoder()
    got = decoder.feed(device.feed(b"stream 1000\n"))
    for fault in (Fault.CORRUPT, Fault.DROPBYTES, Fault.DROPFRAME):
        got += decoder.feed(collect(device, clock, 0.1))
        device.inject(fault)
    got += decoder.feed(collect(device, clock, 0.1) + device.feed(b"stop\n"))
    assert _rows(got) == [(s.stream, s.seq, s.device_us, s.raw) for s in device.streamed]
    assert decoder.counters.corrupt == 2
    assert decoder.counters.lost == 30  # three frames of 10


def test_periodic_frame_faults() -> None:
    """every(CORRUPT, 5) spoils every fifth frame and no read answer."""
    device, clock = board(boot_chatter=False, seed=3)
    device.every(Fault.CORRUPT, 5)
    decoder = FrameDecoder()
    decoder.feed(device.feed(b"stream 100\n") + collect(device, clock, 1.001))
    decoder.flush()  # the last frame is spoiled too: it may look longer than what came
    assert device.frames == 100
    assert decoder.counters.corrupt == 20
    assert device.feed(b"stop\nread\n").endswith(b"512\r\n")


def test_a_reset_mid_stream_reboots_the_board() -> None:
    """RESET: boot chatter, the stream is gone, modes are back to defaults, the clock starts
    again; a new stream numbers from 0 with small device times."""
    device, clock = board(amps=1.0)
    decoder = FrameDecoder()
    decoder.feed(device.feed(b"avg 4\nstream 100\n") + collect(device, clock, 1.0))
    device.inject(Fault.RESET)
    sent = collect(device, clock, 0.5)
    assert sent == BOOT_CHATTER
    assert not device.streaming and device.resets == 1
    again = decoder.feed(device.feed(b"stream 100\n") + collect(device, clock, 0.201))
    assert [s.seq for s in again] == list(range(20))
    assert again[0].device_us < 600_000  # micros() restarted at the reset, 0.5 s before
    assert all(s.flags == 0 for s in again)  # avg 4 was forgotten
    assert decoder.counters.resets == 1


def test_micros0_starts_the_clock_near_its_wrap() -> None:
    """micros0 lets a test cross the 32-bit wrap of micros() in seconds."""
    device, clock = board(micros0=(1 << 32) - 500_000)
    decoder = FrameDecoder()
    got = decoder.feed(device.feed(b"stream 100\n") + collect(device, clock, 1.001))
    assert [s.seq for s in got] == list(range(100))
    times = [s.device_us for s in got]
    assert times[0] < 1 << 32 < times[-1]
    assert {b - a for a, b in pairwise(times)} == {10_000}


def _rows(samples: list[Sample]) -> list[tuple[int, int, int, float]]:
    return [(s.stream, s.seq, s.device_us, s.raw) for s in samples]


def test_rms_value_matches_the_firmware_formula() -> None:
    """RMS in 1/64 counts: a 1 A sine reads amplitude/sqrt(2) counts, like `read` in mode ac."""
    device, clock = board(amps=1.0, ac_hz=60.0)
    device.feed(b"mode ac 60 3\n")
    decoder = FrameDecoder()
    got = decoder.feed(device.feed(b"stream 20\n") + collect(device, clock, 0.5))
    peak = 1.0 * math.sqrt(2) * 0.066 / 5.0 * 1024
    assert got and all(s.raw == pytest.approx(peak / math.sqrt(2), rel=0.02) for s in got)
