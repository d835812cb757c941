"""The simulated Arduino's firmware: PowMon's serial protocol and an ACS712 signal, with no I/O.

The engine is pure (bytes in, bytes out) so that the same device answers behind a real
pseudo-terminal (powmon.sim.pty), behind a pyserial URL (sim://) and in unit tests. It keeps
the real board's limits where a host could trip over them: a 64-byte receive buffer, a 10-bit
ADC, a reset (with boot chatter) on every open, and answers that can go wrong on demand.
"""

from __future__ import annotations

import enum
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

VERSION: Final = "1.0.0"
RX_BUFFER: Final = 64  # the Arduino core's serial receive buffer, in bytes
ADC_MAX: Final = 1023
ADC_RATE: Final = 9615.0  # samples/s of an AVR ADC at 16 MHz with the default /128 prescaler
CHANNELS: Final = 6  # analog inputs A0..A5 of an Uno
MAX_AVG: Final = 64
MAX_CYCLES: Final = 255
MAX_HZ: Final = 1000
MAX_WINDOW: Final = 2.0  # seconds: the firmware refuses an AC window longer than this
MAX_RMS_SAMPLES: Final = 20_000  # keeps one AC answer cheap even at 1 Hz x 100 cycles
BOOT_CHATTER: Final = b"\x00\xffPowMon sim boot\r\n"
CRLF: Final = b"\r\n"
ERR: Final = b"err\r\n"
_NOISE: Final = re.compile(rb"[^\x20-\x7e\r\t]")  # bytes no command line can hold


@dataclass(frozen=True)
class SignalSpec:
    """What the simulated current sensor sees, and how the board converts it.

    `amps` is the DC current, or the RMS of a sine when `ac_hz` is set; `noise` is the standard
    deviation (amps) of gaussian noise added to every sample. The conversion constants match
    PowMon's default settings, so an idle sensor reads 512 and converts back to 0 A.
    """

    amps: float = 0.0
    ac_hz: float | None = None
    noise: float = 0.0
    offset_v: float = 2.5
    sns: float = 0.066
    vref: float = 5.0
    seed: int | None = None
    boot_chatter: bool = True


class Fault(enum.Enum):
    """Ways the next answer to a `read` goes wrong, as they do on a real USB serial line."""

    GARBAGE = "garbage"  # random bytes (line noise, baud mismatch) ending in \r\n
    NONNUMERIC = "nonnumeric"  # a clean line that is not a number: b"abc\r\n"
    PARTIAL = "partial"  # the number without its line end (a cut-off transfer)
    SILENCE = "silence"  # no answer at all
    NON_UTF8 = "nonutf8"  # bytes that are not UTF-8, ending in \r\n


class SimDevice:
    """One simulated board: feed it the host's bytes, get back the bytes it answers.

    `sent` lists every value answered to a `read` as a complete, valid line, in order: exactly
    what a correct host may store. Answers spoiled by a fault are not in it. A lock makes the
    engine safe to share between a serving thread and test code injecting faults.
    """

    def __init__(
        self,
        spec: SignalSpec,
        sensor_id: str = "SIM",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.sensor_id = sensor_id
        self.sent: list[float] = []
        self.reads = 0  # read commands handled, whatever their answer
        self._clock = clock
        self._lock = threading.RLock()
        self._rng = random.Random(spec.seed)
        self._fault_rng = random.Random(None if spec.seed is None else spec.seed + 1)
        self._faults: deque[Fault] = deque()
        self._every: dict[Fault, int] = {}
        self._buf = bytearray()
        self._discarding = False
        self._avg = 1
        self._ac: tuple[int, int] | None = None
        self._handlers: dict[str, Callable[[list[str]], bytes]] = {
            "read": self._read,
            "r": self._drain,
            "id": self._ident,
            "avg": self._set_avg,
            "mode": self._set_mode,
        }

    # -- control, from tests and the CLI ---------------------------------------------------
    def inject(self, fault: Fault, count: int = 1) -> None:
        """Spoil the next `count` answers to `read` commands."""
        if count < 1:
            raise ValueError(f"fault count must be >= 1, got {count}")
        with self._lock:
            self._faults.extend([fault] * count)

    def every(self, fault: Fault, n: int | None) -> None:
        """Spoil every n-th read answer with `fault` (None stops it): a flaky line for demos."""
        if n is not None and n < 1:
            raise ValueError(f"fault period must be >= 1, got {n}")
        with self._lock:
            if n is None:
                self._every.pop(fault, None)
            else:
                self._every[fault] = n

    def boot(self) -> bytes:
        """Reset as the DTR pulse of an open does: default modes, empty buffer; the chatter."""
        with self._lock:
            self._buf.clear()
            self._discarding = False
            self._avg = 1
            self._ac = None
        return BOOT_CHATTER if self.spec.boot_chatter else b""

    # -- signal ----------------------------------------------------------------------------
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

    def _mean(self, t: float, count: int) -> float:
        return sum(self.sample(t + i / ADC_RATE) for i in range(count)) / count

    def _rms(self, t: float, hz: float, cycles: int) -> float:
        """RMS deviation around the mean over whole mains cycles, as the firmware computes it."""
        per_cycle = max(8, min(round(ADC_RATE / hz), MAX_RMS_SAMPLES // cycles))
        n = per_cycle * cycles
        dt = 1.0 / (hz * per_cycle)
        samples = [self.sample(t + i * dt) for i in range(n)]
        mean = sum(samples) / n
        return math.sqrt(sum((s - mean) ** 2 for s in samples) / n)

    # -- protocol --------------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Take bytes from the host; return the answers to every line they complete."""
        out = bytearray()
        with self._lock:
            self._buf += data
            while True:
                end = self._buf.find(b"\n")
                if end < 0:
                    if len(self._buf) >= RX_BUFFER:  # too long for the buffer: drop the line
                        self._buf.clear()
                        self._discarding = True
                    break
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                if self._discarding or end + 1 > RX_BUFFER:  # as the firmware: err at its end
                    self._discarding = False
                    out += ERR
                    continue
                out += self._answer(line)
        return bytes(out)

    def _answer(self, line: bytes) -> bytes:
        if _NOISE.search(line) is not None:
            return ERR  # control or non-ASCII bytes: line noise, never a command
        words = line.decode("ascii").split()
        if not words:
            return b""  # a bare line end: the firmware skips it
        handler = self._handlers.get(words[0])
        return ERR if handler is None else handler(words[1:])

    def _drain(self, args: list[str]) -> bytes:
        return ERR if args else b"ok" + CRLF

    def _ident(self, args: list[str]) -> bytes:
        return ERR if args else f"POWMON {VERSION} SIM-{self.sensor_id}".encode() + CRLF

    def _set_avg(self, args: list[str]) -> bytes:
        count = _int_or_none(args[0]) if len(args) == 1 else None
        if count is None or not 1 <= count <= MAX_AVG:
            return ERR
        self._avg = count
        return f"ok avg {count}".encode() + CRLF

    def _set_mode(self, args: list[str]) -> bytes:
        if args == ["dc"]:
            self._ac = None
            return b"ok dc" + CRLF
        if len(args) != 3 or args[0] != "ac":
            return ERR
        hz = _int_or_none(args[1])
        cycles = _int_or_none(args[2])
        if hz is None or cycles is None or not 1 <= hz <= MAX_HZ or not 1 <= cycles <= MAX_CYCLES:
            return ERR
        if cycles / hz > MAX_WINDOW:
            return ERR
        self._ac = (hz, cycles)
        return f"ok ac {hz} {cycles}".encode() + CRLF

    def _read(self, args: list[str]) -> bytes:
        if len(args) > 1:
            return ERR
        channel = _int_or_none(args[0]) if args else 0
        if channel is None or not 0 <= channel < CHANNELS:
            return ERR
        self.reads += 1
        t = self._clock()
        if self._ac is not None:
            text = f"{self._rms(t, *self._ac):.2f}"
        elif self._avg > 1:
            text = f"{self._mean(t, self._avg):.2f}"
        else:
            text = str(self.sample(t))
        fault = self._next_fault()
        if fault is None:
            self.sent.append(float(text))
            return text.encode() + CRLF
        return self._spoil(fault, text.encode())

    def _next_fault(self) -> Fault | None:
        if self._faults:
            return self._faults.popleft()
        for fault, n in self._every.items():
            if self.reads % n == 0:
                return fault
        return None

    def _spoil(self, fault: Fault, number: bytes) -> bytes:
        if fault is Fault.GARBAGE:
            # A first byte >= 0x80 guarantees that no lenient parser can read a number here.
            size = self._fault_rng.randint(2, 12)
            noise = bytes(b for b in self._fault_rng.randbytes(size * 2) if b not in b"\r\n")[:size]
            return bytes([self._fault_rng.randint(0x80, 0xFF)]) + noise + CRLF
        if fault is Fault.NONNUMERIC:
            return b"abc" + CRLF
        if fault is Fault.PARTIAL:
            return number
        if fault is Fault.SILENCE:
            return b""
        return b"\xff" + number + b"\xfe" + CRLF  # NON_UTF8: 0xFF never occurs in UTF-8


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None
