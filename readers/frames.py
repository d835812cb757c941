"""Stream frames from the firmware (docs/firmware.md, "Stream mode"): bytes in, samples out.

Pure: no I/O, no clock. `FrameDecoder.feed()` takes whatever one serial read returned and
gives back the samples of every complete frame in it, keeping an incomplete tail for the next
call. Frames are checked with their CRC; a frame that fails is counted and skipped, and the
decoder finds the next one by its sync byte (0xA5, never part of a text answer). Text lines
between frames (the `ok stream` and `ok stop` answers, `err`, boot chatter) are collected, and
the stream answers among them are acted on. `ok stop` ends the stream data: the decoder holds
whatever follows (answers to the host's next requests) for `take_rest()`, unless it is the
`ok stream` of a new stream. Sequence numbers (16 bits on the wire) and device times (32-bit
micros) are unwrapped with each other's help (numbering.py); a hole in the numbers is
recorded as a `Hole`, a device clock that went back (a reset) starts a new stream.

The hot path is one pass over the frame headers, one CRC over the run of frames (a run of
valid frames leaves the CRC register at zero), and one struct unpack per frame.
"""

from __future__ import annotations

import binascii
import re
import struct
from collections import deque
from typing import Final

from powmon.readers.numbering import (
    COUNT_MASK,
    HEADER_LEN,
    MAX_PER_FRAME,
    OVERHEAD,
    DecoderCounters,
    Hole,
    Numbering,
    Sample,
    StreamParams,
)

__all__ = [
    "DecoderCounters",
    "FrameDecoder",
    "Hole",
    "Sample",
    "StreamParams",
    "is_answer",
    "parse_stop",
    "parse_stream_ack",
]

SYNC: Final = 0xA5
HEADER: Final = struct.Struct("<BBHI")  # sync, count | flags, seq (low 16 bits), micros
RESERVED: Final = 0x20  # always 0 on the wire; a frame with it set is not a frame
MAX_TEXT: Final = 64  # longest text line the firmware sends
MAX_LINES: Final = 100  # lines kept for take_lines(); all are counted

_VALUES: Final = tuple(struct.Struct(f"<{n}H") for n in range(MAX_PER_FRAME + 1))
# Answers are found at the end of a line: what comes before may be the tail of a frame.
_ACK: Final = re.compile(rb"ok stream (\d{1,5}) (\d{1,7}) (\d{1,2})\Z")
_STOP: Final = re.compile(rb"ok stop (\d{1,10})\Z")
_TEXT_TAIL: Final = re.compile(rb"[\x20-\x7e\t]*\r?\n\Z")  # the printable end of a line


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


def is_answer(line: bytes) -> bool:
    """Whether a text line is an answer to a stream command (`ok stream ...`, `ok stop ...`)."""
    return parse_stream_ack(line) is not None or parse_stop(line) is not None


def _answer_follows(buf: bytearray, i: int) -> bool:
    """Whether a stream answer ends after i: then the frame at i will not get longer."""
    nl = buf.find(b"\n", i + 1)
    return nl >= 0 and is_answer(bytes(buf[max(i + 1, nl + 1 - MAX_TEXT) : nl + 1]))


def _head_invalid(head: int) -> bool:
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
        self.counters = DecoderCounters()
        self.held = False  # `ok stop` came: what follows waits for take_rest()
        self._numbering = Numbering(self.counters)
        self._buf = bytearray()
        self._boundary = 0  # where a frame or a line is due in _buf, or -1 when unknown
        self._lines: deque[bytes] = deque(maxlen=MAX_LINES)
        if params is not None:
            self.start(params)

    # -- control ---------------------------------------------------------------------------
    def start(self, params: StreamParams) -> None:
        """A new stream was acknowledged: numbers start again at 0, the device clock goes on."""
        self._numbering.start(params)

    @property
    def params(self) -> StreamParams | None:
        """The last stream's parameters (None before any)."""
        return self._numbering.params

    @property
    def stream(self) -> int:
        """The current stream's number (Sample.stream), 0 before any."""
        return self._numbering.stream

    @property
    def active(self) -> bool:
        """A stream runs: acknowledged (or detected), not yet stopped."""
        return self._numbering.active

    def take_lines(self) -> list[bytes]:
        """Text lines seen since the last call (without line ends), oldest first; at most
        MAX_LINES, the newest (`counters.lines` counts them all)."""
        lines = list(self._lines)
        self._lines.clear()
        return lines

    def take_holes(self) -> list[Hole]:
        """Holes found since the last call (at most MAX_HOLES; `counters` has them all)."""
        holes = list(self._numbering.holes)
        self._numbering.holes.clear()
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
            return i if pos + 1 < n and _head_invalid(buf[i + 1]) else -1
        with memoryview(buf) as view:
            if binascii.crc_hqx(view[i:pos], 0) != 0:
                pos = _valid_prefix(view, starts)  # some frame in the run is bad
        if pos == i:
            return i
        if i != self._boundary:
            self.counters.resyncs += 1
        frame = self._numbering.frame
        for start in starts:
            if start >= pos:
                break
            _, head, seq16, t32 = HEADER.unpack_from(buf, start)
            frame(
                head,
                seq16,
                t32,
                _VALUES[head & COUNT_MASK].unpack_from(buf, start + HEADER_LEN),
                out,
            )
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
            if text is not None and nl < junk_until and not is_answer(text.group()):
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
        self._numbering.stop(count)
