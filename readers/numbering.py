"""From valid stream frames to samples: numbers and device times unwrapped, holes, resets.

Pure, and the second half of the frame decoder (frames.py finds and checks the frames). A
frame carries the low 16 bits of its first sample's number and the low 32 bits of the
device's micros(); samples within a frame are one period apart. Each is unwrapped with the
other's help: the time since the last frame says how many samples should have passed, so a
hole longer than 65536 samples is still sized right, and a number that time cannot explain
is a new stream. A device clock that goes back means the device reset.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, NamedTuple

HEADER_LEN: Final = 8  # sync, count | flags, seq (low 16 bits), micros (low 32 bits)
OVERHEAD: Final = HEADER_LEN + 2  # + CRC-16/XMODEM, high byte first
MAX_PER_FRAME: Final = 16
COUNT_MASK: Final = 0x1F
FLAG_SHIFT: Final = 5  # count byte >> 5 gives the reading flags: 2 ac_rms, 4 averaged
SCALE: Final = 64  # values are in 1/64 ADC counts
SEQ_MOD: Final = 1 << 16
TIME_MOD: Final = 1 << 32
MAX_HOLES: Final = 1000  # holes kept for take_holes(); all are counted


class StreamParams(NamedTuple):
    """What the device acknowledged: `ok stream HZ PERIOD_US PER_FRAME`."""

    hz: int
    period_us: int
    per_frame: int

    @property
    def frame_len(self) -> int:
        """Bytes of a full frame."""
        return OVERHEAD + 2 * self.per_frame


class Sample(NamedTuple):
    """One reported sample.

    `stream` counts the streams this decoder has seen (1 for the first); `seq` is the device's
    sample number within that stream (0, 1, 2, ... unwrapped); `device_us` is the device's
    micros() when the sample was taken, unwrapped to 64 bits (it goes back only when the device
    reset); `raw` is in ADC counts (an int for plain samples, a multiple of 1/64 for means and
    RMS values); `flags` are reading flags as the device reported them (Flag.AC_RMS,
    Flag.AVERAGED).
    """

    stream: int
    seq: int
    device_us: int
    raw: float
    flags: int


class Hole(NamedTuple):
    """Samples first..last (inclusive) of `stream` never arrived (dropped or corrupt)."""

    stream: int
    first: int
    last: int


@dataclass(slots=True)
class DecoderCounters:
    """Everything the decoder saw; every byte is in a frame, a text line or `skipped`."""

    frames: int = 0  # valid frames
    samples: int = 0  # samples returned
    corrupt: int = 0  # frames that started where one was due but failed their check
    skipped: int = 0  # bytes in no valid frame and no text line
    resyncs: int = 0  # valid frames found after skipped bytes
    holes: int = 0  # gaps in the sample numbers ...
    lost: int = 0  # ... and the samples in them
    resets: int = 0  # the device clock went back: it restarted
    restarts: int = 0  # a new stream began without its `ok stream` answer being seen
    streams: int = 0  # streams started (acknowledged or detected)
    orphans: int = 0  # valid frames outside any stream (before the first `ok stream`)
    lines: int = 0  # text lines
    stops: int = 0  # `ok stop` answers


class Numbering:
    """The numbers and times of one port's streams, frame after frame."""

    def __init__(self, counters: DecoderCounters) -> None:
        self.counters = counters
        self.params: StreamParams | None = None
        self.stream = 0
        self.active = False  # a stream is running (acknowledged, not yet stopped)
        self.holes: deque[Hole] = deque(maxlen=MAX_HOLES)
        self._next_seq = 0  # number of the sample after the last one returned
        self._frame_seq = -1  # first sample of the last frame (-1: no frame yet this stream)
        self._frame_count = 0
        self._t = -1  # unwrapped device time of the last frame (-1: none yet)
        self._t32 = 0

    def start(self, params: StreamParams) -> None:
        """A new stream was acknowledged: numbers start again at 0, the device clock goes on."""
        self.params = params
        self.active = True
        self._new_stream()

    def stop(self, count: int) -> None:
        """`ok stop COUNT`: the stream numbered 0..count-1; what never came is a hole."""
        if self.active:
            self.active = False
            if count > self._next_seq:
                self._hole(self._next_seq, count - 1)

    def frame(
        self, head: int, seq16: int, t32: int, values: tuple[int, ...], out: list[Sample]
    ) -> None:
        """Append a valid frame's samples to `out` (none outside a stream)."""
        c = self.counters
        c.frames += 1
        params = self.params
        if params is None or not self.active:
            c.orphans += 1
            return
        period = params.period_us
        dt = (t32 - self._t32) % TIME_MOD
        self._t32 = t32
        if self._t < 0 or dt >= TIME_MOD >> 1:
            if self._t >= 0:  # the device clock went back: it reset
                c.resets += 1
                if self._frame_seq >= 0:  # ... and this stream's numbers start again too
                    self._new_stream()
            t = self._t = t32
            seq = self._first_seq(seq16)
        else:
            t = self._t = self._t + dt
            seq = self._seq(seq16, dt, period)
        count = len(values)
        self._frame_seq = seq
        self._frame_count = count
        self._next_seq = seq + count
        flags = head >> FLAG_SHIFT
        stream = self.stream
        c.samples += count
        if count == 1:
            raw = values[0] >> 6 if not flags else values[0] / SCALE
            out.append(Sample(stream, seq, t, raw, flags))
            return
        raws = [v >> 6 for v in values] if not flags else [v / SCALE for v in values]
        new = tuple.__new__
        out.extend(
            new(Sample, (stream, seq + k, t + k * period, raws[k], flags)) for k in range(count)
        )

    def _seq(self, seq16: int, dt: int, period: int) -> int:
        """The unwrapped number of a frame's first sample, from the last frame and the time."""
        if self._frame_seq < 0:
            return self._first_seq(seq16)
        step = self._frame_count * period
        if seq16 == self._next_seq % SEQ_MOD and abs(dt - step) * 2 < period:
            return self._next_seq  # the next frame, as nearly always
        expected = self._frame_seq + round(dt / period)
        if (expected - seq16) % SEQ_MOD == 0 and expected >= self._next_seq:
            self._hole(self._next_seq, expected - 1)
            return expected
        self.counters.restarts += 1  # numbers that time cannot explain: a new stream
        self._new_stream()
        return self._first_seq(seq16)

    def _first_seq(self, seq16: int) -> int:
        if seq16:
            self._hole(0, seq16 - 1)
        return seq16

    def _new_stream(self) -> None:
        self.stream += 1
        self.counters.streams += 1
        self._next_seq = 0
        self._frame_seq = -1

    def _hole(self, first: int, last: int) -> None:
        c = self.counters
        c.holes += 1
        c.lost += last - first + 1
        self.holes.append(Hole(self.stream, first, last))
