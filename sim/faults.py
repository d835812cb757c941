"""What can go wrong on the simulated board's serial line, and how it spoils the bytes.

Read faults spoil the answer to a `read`; frame faults spoil a stream frame; a reset hits
whatever comes next. The byte-level faults never touch a frame's first (sync) byte: a host
then sees a frame that starts where it should and fails its check, which it can count exactly.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from typing import Final

CRLF: Final = b"\r\n"


class Fault(enum.Enum):
    """Ways the next answer to a `read`, or the next stream frame, goes wrong."""

    GARBAGE = "garbage"  # random bytes (line noise, baud mismatch) ending in \r\n
    NONNUMERIC = "nonnumeric"  # a clean line that is not a number: b"abc\r\n"
    PARTIAL = "partial"  # the number without its line end (a cut-off transfer)
    SILENCE = "silence"  # no answer at all
    NON_UTF8 = "nonutf8"  # bytes that are not UTF-8, ending in \r\n
    CORRUPT = "corrupt"  # stream: one bit of one byte of the next frame flipped
    DROPBYTES = "dropbytes"  # stream: the next frame loses 1 to 3 of its bytes
    DROPFRAME = "dropframe"  # stream: the next frame is not sent at all
    RESET = "reset"  # the board resets: boot chatter, its clock from 0, no stream


FRAME_FAULTS: Final = frozenset({Fault.CORRUPT, Fault.DROPBYTES, Fault.DROPFRAME})
READ_FAULTS: Final = frozenset(set(Fault) - FRAME_FAULTS - {Fault.RESET})


class FaultPlan:
    """The faults planned for one kind of output (read answers, or frames): the injected ones
    first, in order, then the periodic ones (every n-th). Not thread-safe: the device locks."""

    def __init__(self, kinds: frozenset[Fault]) -> None:
        self.kinds = kinds
        self._queue: deque[Fault] = deque()
        self._every: dict[Fault, int] = {}

    def inject(self, fault: Fault, count: int) -> None:
        self._queue.extend([fault] * count)

    def every(self, fault: Fault, n: int | None) -> None:
        if n is None:
            self._every.pop(fault, None)
        else:
            self._every[fault] = n

    def next(self, number: int) -> Fault | None:
        """The fault for output number `number` (1, 2, ...), if any."""
        if self._queue:
            return self._queue.popleft()
        for fault, n in self._every.items():
            if number % n == 0:
                return fault
        return None


def spoil_answer(fault: Fault, number: bytes, rng: random.Random) -> bytes:
    """The bytes a read fault sends instead of the answer `number` + CRLF."""
    if fault is Fault.GARBAGE:
        # A first byte >= 0x80 guarantees that no lenient parser can read a number here.
        size = rng.randint(2, 12)
        noise = bytes(b for b in rng.randbytes(size * 2) if b not in b"\r\n")[:size]
        return bytes([rng.randint(0x80, 0xFF)]) + noise + CRLF
    if fault is Fault.NONNUMERIC:
        return b"abc" + CRLF
    if fault is Fault.PARTIAL:
        return number
    if fault is Fault.SILENCE:
        return b""
    return b"\xff" + number + b"\xfe" + CRLF  # NON_UTF8: 0xFF never occurs in UTF-8


def spoil_frame(fault: Fault, frame: bytes, rng: random.Random) -> bytes:
    """The bytes a frame fault sends instead of `frame` (its sync byte is always kept)."""
    if fault is Fault.DROPFRAME:
        return b""
    if fault is Fault.CORRUPT:
        pos = rng.randrange(1, len(frame))
        flipped = frame[pos] ^ (1 << rng.randrange(8))
        return frame[:pos] + bytes([flipped]) + frame[pos + 1 :]
    lost = set(rng.sample(range(1, len(frame)), rng.randint(1, 3)))
    return bytes(b for i, b in enumerate(frame) if i not in lost)
