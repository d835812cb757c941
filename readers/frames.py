"""Stream frames from the firmware (docs/firmware.md, "Stream mode"): bytes in, samples out.

Pure: no I/O, no clock. `FrameDecoder.feed()` takes whatever one serial read returned and
gives back the samples of every complete frame in it, keeping an incomplete tail for the next
call. Frames are checked with their CRC; a frame that fails is counted and skipped, and the
decoder finds the next one by its sync byte (0xA5, never part of a text answer). Text lines
between frames (the `ok stream` and `ok stop` answers, `err`, boot chatter) are collected, and
the stream answers among them are acted on. `ok stop` ends the stream data: the decoder holds
whatever follows (answers to the host's next requests) for `take_rest()`, unless it is the
`ok stream` of a new stream. Sequence numbers (16 bits on the wire) and device times (32-bit
micros) are unwrapped with each other's help; a hole in the numbers is recorded as a `Hole`,
a device clock that went back (a reset) starts a new stream.

The hot path is one pass over the frame headers, one CRC over the run of frames (a run of
valid frames leaves the CRC register at zero), and one struct unpack per frame.
"""

from __future__ import annotations

import binascii
import re
import struct
from collections import deque
from dataclasses import dataclass
from typing import Final, NamedTuple

SYNC: Final = 0xA5
HEADER: Final = struct.Struct("<BBHI")  # sync, count | flags, seq (low 16 bits), micros
HEADER_LEN: Final = 8
OVERHEAD: Final = HEADER_LEN + 2  # + CRC-16/XMODEM, high byte first
MAX_PER_FRAME: Final = 16
COUNT_MASK: Final = 0x1F
RESERVED: Final = 0x20  # always 0 on the wire; a frame with it set is not a frame
FLAG_SHIFT: Final = 5  # count byte >> 5 gives the reading flags: 2 ac_rms, 4 averaged
SCALE: Final = 64  # values are in 1/64 ADC counts
MAX_TEXT: Final = 64  # longest text line the firmware sends
SEQ_MOD: Final = 1 << 16
TIME_MOD: Final = 1 << 32
MAX_HOLES: Final = 1000  # holes kept for take_holes(); all are counted

_VALUES: Final = tuple(struct.Struct(f"<{n}H") for n in range(MAX_PER_FRAME + 1))
# Answers are found at the end of a line: what comes before may be the tail of a frame.
_ACK: Final = re.compile(rb"ok stream (\d{1,5}) (\d{1,7}) (\d{1,2})\Z")
_STOP: Final = re.compile(rb"ok stop (\d{1,10})\Z")
_TEXT_TAIL: Final = re.compile(rb"[\x20-\x7e\t]*\r?\n\Z")  # the printable end of a line


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
class Counters:
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


def parse_stream_ack(line: bytes) -> StreamParams | None:
    """`ok stream 100 10000 1` (line end and junk before it allowed) -> StreamParams, or None."""
    match = _ACK.search(line.rstrip())
    if match is None:
        return None
    hz, period, per_frame = (int(g) for g in match.groups())
    if hz < 1 or period < 1 or not 1 <= per_frame <= MAX_PER_FRAME:
        return None
    return StreamParams(hz, period, per_frame)


def parse_stop(line: bytes) -> int | None:
    """`ok stop 930` -> 930 (how many samples the stream numbered), else None."""
    match = _STOP.search(line.rstrip())
    return None if match is None else int(match.group(1))


def _is_answer(line: bytes) -> bool:
    return parse_stream_ack(line) is not None or parse_stop(line) is not None


def _answer_follows(buf: bytearray, i: int) -> bool:
    """Whether a stream answer ends after i: then the frame at i will not get longer."""
    nl = buf.find(b"\n", i + 1)
    return nl >= 0 and _is_answer(bytes(buf[max(i + 1, nl + 1 - MAX_TEXT) : nl + 1]))


def head_invalid(head: int) -> bool:
    """Whether a frame's second byte (count | flags) cannot be a frame's."""
    return bool(head & RESERVED) or not 1 <= head & COUNT_MASK <= MAX_PER_FRAME


def _valid_prefix(view: memoryview, starts: list[int]) -> int:
    """Where the first frame failing its CRC starts (the run's frames start at `starts`)."""
    for start in starts:
        end = start + OVERHEAD + 2 * (view[start + 1] & COUNT_MASK)
        if binascii.crc_hqx(view[start:end], 0) != 0:
            return start
    return end


class FrameDecoder:
    """Incremental decoder of one port's byte stream; see the module docstring."""

    def __init__(self, params: StreamParams | None = None) -> None:
        self.counters = Counters()
        self.params: StreamParams | None = None
        self.stream = 0
        self.active = False  # a stream is running (acknowledged, not yet stopped)
        self.held = False  # `ok stop` came: what follows waits for take_rest()
        self._buf = bytearray()
        self._boundary = 0  # where a frame or a line is due in _buf, or -1 when unknown
        self._lines: list[bytes] = []
        self._holes: deque[Hole] = deque(maxlen=MAX_HOLES)
        self._next_seq = 0  # number of the sample after the last one returned
        self._frame_seq = -1  # first sample of the last frame (-1: no frame yet this stream)
        self._frame_count = 0
        self._t = -1  # unwrapped device time of the last frame (-1: none since the start)
        self._t32 = 0
        if params is not None:
            self.start(params)

    # -- control ---------------------------------------------------------------------------
    def start(self, params: StreamParams) -> None:
        """A new stream was acknowledged: numbers start again at 0, the device clock goes on."""
        self.params = params
        self.stream += 1
        self.counters.streams += 1
        self.active = True
        self._next_seq = 0
        self._frame_seq = -1

    def take_lines(self) -> list[bytes]:
        """Text lines seen since the last call (without line ends), oldest first."""
        lines, self._lines = self._lines, []
        return lines

    def take_holes(self) -> list[Hole]:
        """Holes found since the last call (at most MAX_HOLES; `counters` has them all)."""
        holes = list(self._holes)
        self._holes.clear()
        return holes

    @property
    def pending(self) -> int:
        """Bytes held back: an incomplete frame or line, or what came after `ok stop`."""
        return len(self._buf)

    def take_rest(self) -> bytes:
        """After `ok stop`: the bytes that followed it (not stream data), handed over."""
        rest = bytes(self._buf)
        self._buf.clear()
        self.held = False
        self._boundary = 0
        return rest

    def flush(self) -> list[Sample]:
        """The line went quiet: settle what is held back (an incomplete frame is junk)."""
        out: list[Sample] = []
        if not self.held:
            self._scan(out, final=True)
        return out

    # -- decoding --------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Sample]:
        """The samples of every complete frame in what arrived so far, in order."""
        self._buf += data
        out: list[Sample] = []
        if self.held and not self._resume():
            return out
        self._scan(out, final=False)
        while self.held and self._resume():
            self._scan(out, final=False)
        return out

    def _resume(self) -> bool:
        """Held after `ok stop`: go on only if the next line is a new stream's `ok stream`."""
        nl = self._buf.find(b"\n")
        if nl < 0 or parse_stream_ack(bytes(self._buf[: nl + 1])) is None:
            return False
        self.held = False
        self._boundary = 0
        return True

    def _scan(self, out: list[Sample], final: bool) -> None:
        buf = self._buf
        n = len(buf)
        i = 0
        while i < n:
            if buf[i] == SYNC:
                end = self._run(buf, i, n, out)
                if end > i:
                    i = end
                    continue
                if end < 0 and not final and not _answer_follows(buf, i):
                    break  # a frame that may still be arriving
                self._bad_frame(buf, i, n)
                i += 1
            j = buf.find(SYNC, i)
            stop = n if j < 0 else j
            held = self._unframed(buf, i, stop, settled=final or j >= 0)
            if held >= 0:
                i = held
                break
            i = stop
        del buf[:i]
        self._boundary = self._boundary - i if self._boundary >= i else -1

    def _run(self, buf: bytearray, i: int, n: int, out: list[Sample]) -> int:
        """Decode the run of valid frames at i; its end, i if none, -1 if one is incomplete."""
        starts: list[int] = []
        pos = i
        while pos + 1 < n and buf[pos] == SYNC:
            head = buf[pos + 1]
            count = head & COUNT_MASK
            if head & RESERVED or not 1 <= count <= MAX_PER_FRAME:
                break
            end = pos + OVERHEAD + 2 * count
            if end > n:
                break
            starts.append(pos)
            pos = end
        if not starts:
            return i if pos + 1 < n and head_invalid(buf[i + 1]) else -1
        with memoryview(buf) as view:
            if binascii.crc_hqx(view[i:pos], 0) != 0:
                pos = _valid_prefix(view, starts)  # some frame in the run is bad
        if pos == i:
            return i
        if i != self._boundary:
            self.counters.resyncs += 1
        for start in starts:
            if start >= pos:
                break
            self._frame(buf, start, out)
        self._boundary = pos
        return pos

    def _bad_frame(self, buf: bytearray, i: int, n: int) -> None:
        """A sync byte at i that starts no valid frame: corrupt if a frame was due there."""
        if i == self._boundary:
            self.counters.corrupt += 1
            count = buf[i + 1] & COUNT_MASK if i + 1 < n else 0
            # A frame damaged but whole ends where its header says: the next one is due there.
            self._boundary = i + OVERHEAD + 2 * count if 1 <= count <= MAX_PER_FRAME else -1
        self.counters.skipped += 1

    def _unframed(self, buf: bytearray, i: int, stop: int, settled: bool) -> int:
        """Bytes i..stop hold no frame: text lines (the printable ends of lines) and junk.

        Lines ending inside a corrupt frame (before where it should have ended) are junk. Returns
        where to wait for more bytes (an unfinished line at the end of what arrived; not when
        `settled`, when a sync byte follows or the line went quiet), -1 when all is taken.
        """
        c = self.counters
        junk_until = max(self._boundary, i)
        pos = i
        while pos < stop:
            nl = buf.find(b"\n", pos, stop)
            if nl < 0:
                if not settled and stop - pos < MAX_TEXT and pos >= junk_until:
                    return pos
                c.skipped += stop - pos
                return -1
            segment = bytes(buf[pos : nl + 1])
            # A line ending inside a damaged frame is part of it, unless it is a stream answer
            # (the frame claimed to be longer than it was); the answers are found at the end.
            text = _TEXT_TAIL.search(segment)
            if text is not None and nl < junk_until and not _is_answer(text.group()):
                text = None
            if text is not None and (line := text.group().rstrip(b"\r\n")):
                c.skipped += text.start()
                self._line(line)
                self._boundary = nl + 1
                if self.held:
                    return nl + 1  # after `ok stop`: not stream data
            else:
                c.skipped += len(segment)
            pos = nl + 1
        return -1

    def _line(self, line: bytes) -> None:
        """A text line: kept for take_lines(); the stream answers also act on the stream."""
        self.counters.lines += 1
        self._lines.append(line)
        params = parse_stream_ack(line)
        if params is not None:
            self.start(params)
            return
        count = parse_stop(line)
        if count is None:
            return
        self.counters.stops += 1
        self.held = True
        if self.active:
            self.active = False
            if count > self._next_seq:  # the last frames of the stream never arrived
                self._hole(self._next_seq, count - 1)

    def _hole(self, first: int, last: int) -> None:
        c = self.counters
        c.holes += 1
        c.lost += last - first + 1
        self._holes.append(Hole(self.stream, first, last))

    def _frame(self, buf: bytearray, i: int, out: list[Sample]) -> None:
        _, head, seq16, t32 = HEADER.unpack_from(buf, i)
        count = head & COUNT_MASK
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
        self._frame_seq = seq
        self._frame_count = count
        self._next_seq = seq + count
        values = _VALUES[count].unpack_from(buf, i + HEADER_LEN)
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
