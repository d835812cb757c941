"""The simulated Arduino's firmware: PowMon's serial protocol and an ACS712 signal, with no I/O.

The engine is pure (bytes in, bytes out) so that the same device answers behind a real
pseudo-terminal (powmon.sim.pty), behind a pyserial URL (sim://) and in unit tests. It keeps
the real board's limits where a host could trip over them: a 64-byte receive buffer, a 10-bit
ADC, a reset (with boot chatter) on every open, and answers that can go wrong on demand.
Its stream mode (`stream HZ`, sim/stream.py) follows its own clock, which may drift: the host
collects what is due with `poll()`, and frames can be corrupted, lose bytes or vanish.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from typing import Final

from powmon.sim import stream
from powmon.sim.faults import FRAME_FAULTS, READ_FAULTS, Fault, FaultPlan, spoil_answer, spoil_frame
from powmon.sim.signal import VERSION, Signal, SignalSpec

__all__ = ["BOOT_CHATTER", "Fault", "SignalSpec", "SimDevice"]

CAPABILITIES: Final = "stream"  # words after the board id in the `id` answer, as the firmware
RX_BUFFER: Final = 64  # the Arduino core's serial receive buffer, in bytes
CHANNELS: Final = 6  # analog inputs A0..A5 of an Uno
MAX_AVG: Final = 64
MAX_CYCLES: Final = 255
MAX_HZ: Final = 1000
MAX_WINDOW: Final = 2.0  # seconds: the firmware refuses an AC window longer than this
BOOT_CHATTER: Final = b"\x00\xffPowMon sim boot\r\n"
CRLF: Final = b"\r\n"
ERR: Final = b"err\r\n"
DEFAULT_BAUD: Final = 115200  # the firmware's; the stream limits follow the device's baud
_NOISE: Final = re.compile(rb"[^\x20-\x7e\r\t]")  # bytes no command line can hold


class SimDevice:
    """One simulated board: feed it the host's bytes, get back the bytes it answers.

    `sent` lists every value answered to a `read` as a complete, valid line, in order: exactly
    what a correct host may store. Answers spoiled by a fault are not in it; `streamed` is the
    same for stream samples, in intact frames. A lock makes the engine safe to share between a
    serving thread and test code injecting faults. `baud` sets the stream limits (the front
    ends set it to the line's rate).
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
        self.streamed: list[stream.Streamed] = []
        self.reads = 0  # read commands handled, whatever their answer
        self.frames = 0  # stream frames made, whatever became of them
        self.resets = 0  # resets injected (not the boots of an open)
        self.baud = DEFAULT_BAUD
        self._clock = clock
        self._boot_at = clock()
        self._stream: stream.SimStream | None = None
        self._streams = 0
        self._frame_faults = FaultPlan(FRAME_FAULTS | {Fault.RESET})
        self._reset_due = False
        self._lock = threading.RLock()
        self._signal = Signal(spec, self._lock)
        self._fault_rng = random.Random(None if spec.seed is None else spec.seed + 1)
        self._read_faults = FaultPlan(READ_FAULTS | {Fault.RESET})
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
            "stream": self._start_stream,
            "stop": self._stop,
        }
        if spec.firmware != VERSION:  # an older sketch: no stream mode (1.0.0), or only
            del self._handlers["stream"], self._handlers["stop"]  # read and r (none)
        if spec.firmware == "none":
            del self._handlers["id"], self._handlers["avg"], self._handlers["mode"]

    # -- control, from tests and the CLI ---------------------------------------------------
    def inject(self, fault: Fault, count: int = 1) -> None:
        """Spoil the next `count` read answers (frames, for frame faults); RESET: reset now.

        A reset takes effect at the next feed() or poll(), which the front ends call often.
        """
        if count < 1:
            raise ValueError(f"fault count must be >= 1, got {count}")
        with self._lock:
            if fault is Fault.RESET:
                self._reset_due = True
            elif fault in FRAME_FAULTS:
                self._frame_faults.inject(fault, count)
            else:
                self._read_faults.inject(fault, count)

    def every(self, fault: Fault, n: int | None) -> None:
        """Spoil every n-th read answer (or frame) with `fault`, None stops it: for demos.

        RESET replaces every n-th read answer and every n-th frame with a reset.
        """
        if n is not None and n < 1:
            raise ValueError(f"fault period must be >= 1, got {n}")
        with self._lock:
            for plan in (self._read_faults, self._frame_faults):
                if fault in plan.kinds:
                    plan.every(fault, n)

    def boot(self) -> bytes:
        """Reset as the DTR pulse of an open does: default modes, empty buffer, no stream,
        the clock from micros0 again; returns the boot chatter."""
        with self._lock:
            self._buf.clear()
            self._discarding = False
            self._avg = 1
            self._ac = None
            self._stream = None
            self._boot_at = self._clock()
        return BOOT_CHATTER if self.spec.boot_chatter else b""

    def _reset(self) -> bytes:
        self.resets += 1
        self._reset_due = False
        return self.boot()

    # -- the device clock ------------------------------------------------------------------
    def micros(self, now: float) -> float:
        """The board's micros() at host time `now` (unwrapped; the frames carry 32 bits)."""
        elapsed = (now - self._boot_at) * (1.0 + self.spec.drift_ppm * 1e-6)
        return self.spec.micros0 + elapsed * 1e6

    def host_time(self, device_us: float) -> float:
        """The host time at which the board's clock reads `device_us`."""
        elapsed = (device_us - self.spec.micros0) / 1e6
        return self._boot_at + elapsed / (1.0 + self.spec.drift_ppm * 1e-6)

    # -- signal ----------------------------------------------------------------------------
    def sample(self, t: float) -> int:
        """One 10-bit ADC conversion of the sensor output at simulated time `t` (seconds)."""
        return self._signal.sample(t)

    # -- protocol --------------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Take bytes from the host; return the answers to every line they complete."""
        out = bytearray()
        with self._lock:
            if self._reset_due:
                out += self._reset()
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
                    out += self._end_stream() + ERR
                    continue
                out += self._answer(line)
        return bytes(out)

    def _answer(self, line: bytes) -> bytes:
        noise = _NOISE.search(line) is not None  # control or non-ASCII bytes: never a command
        words = [] if noise else line.decode("ascii").split()
        if not noise and not words:
            return b""  # a bare line end: the firmware skips it
        # Any request ends a stream first, as `stop` does; `stop` then asks nothing more.
        ended = self._end_stream()
        if ended and words == ["stop"]:
            return ended
        handler = None if noise else self._handlers.get(words[0])
        return ended + (ERR if handler is None else handler(words[1:]))

    def _drain(self, args: list[str]) -> bytes:
        return ERR if args else b"ok" + CRLF

    def _ident(self, args: list[str]) -> bytes:
        if args:
            return ERR
        words = f" {CAPABILITIES}" if self.spec.firmware == VERSION else ""
        return f"POWMON {self.spec.firmware} SIM-{self.sensor_id}{words}".encode() + CRLF

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
            text = f"{self._signal.rms(t, *self._ac):.2f}"
        elif self._avg > 1:
            text = f"{self._signal.mean(t, self._avg):.2f}"
        else:
            text = str(self.sample(t))
        fault = self._read_faults.next(self.reads)
        if fault is Fault.RESET:
            return self._reset()  # the board restarts instead of answering
        if fault is None:
            self.sent.append(float(text))
            return text.encode() + CRLF
        return spoil_answer(fault, text.encode(), self._fault_rng)

    # -- stream mode -----------------------------------------------------------------------
    def _start_stream(self, args: list[str]) -> bytes:
        hz = _int_or_none(args[0]) if 1 <= len(args) <= 2 else None
        channel = _int_or_none(args[1]) if len(args) == 2 else 0
        if hz is None or not 1 <= hz <= 65535 or channel is None or not 0 <= channel < CHANNELS:
            return ERR
        limit = stream.max_hz(self.baud, self._avg, self._ac, self.spec.adc_rate)
        if hz > limit:
            return f"err max {limit}".encode() + CRLF
        period = stream.period_us(hz)
        per_frame = stream.frame_size(hz, self.baud)
        flags, acquire_us, acquire = stream.acquisition(
            self._signal, self._avg, self._ac, self.spec.adc_rate, self.host_time
        )
        self._streams += 1
        start_us = int(self.micros(self._clock()))
        self._stream = stream.SimStream(
            self._streams, hz, period, per_frame, flags, start_us, acquire_us, acquire
        )
        return f"ok stream {hz} {period} {per_frame}".encode() + CRLF

    def _stop(self, args: list[str]) -> bytes:
        return ERR if args else b"ok stop 0" + CRLF  # no stream runs (one would have ended)

    def _end_stream(self) -> bytes:
        """End a running stream: its last frames and `ok stop COUNT`; b'' if none runs."""
        if self._stream is None:
            return b""
        frames, count = self._stream.stop(self.micros(self._clock()))
        self._stream = None
        sent = b"".join(data for _, data in self._send(frames))
        return sent + f"ok stop {count}".encode() + CRLF

    def poll(self, now: float | None = None) -> list[tuple[float, bytes]]:
        """What the board sends on its own by `now`: (host time it is ready, bytes), in order.

        The frames of a running stream, spoiled by frame faults, and a reset's boot chatter.
        """
        with self._lock:
            now = self._clock() if now is None else now
            out: list[tuple[float, bytes]] = []
            if self._reset_due:
                out.append((now, self._reset()))
            if self._stream is not None:
                out += self._send(self._stream.due(self.micros(now)))
            return out

    def next_due(self) -> float | None:
        """The host time of the next poll() with something to send (None: nothing planned)."""
        with self._lock:
            if self._reset_due:
                return self._clock()
            if self._stream is None:
                return None
            return self.host_time(self._stream.next_ready_us())

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def _send(self, frames: list[stream.Frame]) -> list[tuple[float, bytes]]:
        out: list[tuple[float, bytes]] = []
        for frame in frames:
            self.frames += 1
            ready = self.host_time(frame.ready_us)
            fault = self._frame_faults.next(self.frames)
            if fault is Fault.RESET:
                out.append((ready, self._reset()))  # the rest of the stream never happens
                break
            if fault is None:
                self.streamed += frame.samples
                out.append((ready, frame.data))
            else:
                out.append((ready, spoil_frame(fault, frame.data, self._fault_rng)))
        return out


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None
