"""The host side of the Arduino serial protocol: open a port, ask, read one answer line, parse it.

The device answers each request with one line. A request has no id, so the only way to keep
answers lined up with requests is to read exactly one line per request and, whenever a line is
bad (garbage, partial, silence), drain: send `r`, read its answer, and drop anything still
buffered. This module knows the bytes; reader.py decides what to do with them.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import select
import sys
import threading
import time
from typing import Final, Protocol, cast

import serial

from powmon.common.errors import DeviceError
from powmon.common.runtime import wake_fd

try:
    import termios

    _TERMIOS_ERRORS: tuple[type[Exception], ...] = (termios.error,)
except ImportError:  # Windows
    _TERMIOS_ERRORS = ()

log = logging.getLogger(__name__)

SIM_HANDLERS: Final = "powmon.sim"
ADC_MAX: Final = 1023
MAX_LINE: Final = 64  # longest answer we wait for; a line with no '\n' by then is garbage
READ_SLICE: Final = 0.2  # longest blocking read, so that a stop request is seen in time
READ_CHUNK: Final = 4096  # one os.read takes what a tty's input buffer can hold

READ: Final = b"read \n"
DRAIN: Final = b"r \n"
IDENT: Final = b"id \n"

# An answer is a count 0..1023, with decimals when the firmware averages or takes an RMS.
_NUMBER: Final = re.compile(rb"\s*(\d{1,9}(?:\.\d{1,9})?)\s*")


class BadAnswer(Exception):
    """An answer line that is not a reading; `kind` names why, for counters and logs."""

    def __init__(self, kind: str, line: bytes) -> None:
        super().__init__(kind)
        self.kind = kind
        self.line = line

    def __str__(self) -> str:
        return f"{self.kind}: {self.line[:40]!r}"


class Port(Protocol):
    """What the reader uses of a pyserial port (every concrete pyserial class has it all)."""

    @property
    def port(self) -> str | None: ...
    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1, /) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


def read_command(channel: int | None) -> bytes:
    return READ if channel is None else b"read %d\n" % channel


def parse_answer(line: bytes) -> float:
    """The ADC count in one answer line (int when the device sent no decimals).

    Raises BadAnswer for silence ('timeout'), a line cut short ('partial'), bytes that are not
    UTF-8 ('non_utf8'), anything that is not a plain decimal number ('non_numeric') and a
    number outside 0..1023 ('out_of_range').
    """
    match = _NUMBER.fullmatch(line)
    if match is not None and line.endswith(b"\n"):
        text = match.group(1)
        value: float = float(text) if b"." in text else int(text)
        if value <= ADC_MAX:
            return value
        raise BadAnswer("out_of_range", line)
    raise BadAnswer(_why_bad(line), line)


def _why_bad(line: bytes) -> str:
    if not line:
        return "timeout"
    if not line.endswith(b"\n"):
        return "partial"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "non_utf8"
    return "non_numeric"


class PortUnavailable(DeviceError):
    """The port itself cannot be opened (not there, taken, no permission): retried with
    backoff, and said in the heartbeat (`problem`, `waiting_for_port`) as one line; `reason`
    is the driver's own error."""

    def __init__(self, url: str, reason: Exception) -> None:
        super().__init__(open_problem(url, reason))
        self.reason = reason


class BadPort(DeviceError):
    """The port's name or an option is wrong (pyserial's ValueError or TypeError, in
    `reason`): bad settings, which retrying will not fix."""

    def __init__(self, url: str, reason: Exception) -> None:
        super().__init__(f"cannot open serial port {url!r}: {reason}")
        self.reason = reason


def open_problem(url: str, err: Exception) -> str:
    """One line for the heartbeat and the log: why `url` cannot be opened."""
    if getattr(err, "errno", None) == errno.ENOENT:
        return f"port not found: {url!r}: {os.strerror(errno.ENOENT)}"
    return f"cannot open port {url!r}: {err}"


def open_port(url: str, baudrate: int, timeout: float) -> Port:
    """Open a serial port by name or URL (COM4, /dev/ttyACM0, a pty, sim://VIC?amps=2).

    Exclusive access keeps a second reader off the same board; handlers that do not know the
    option (pyserial raises ValueError or TypeError for those) are opened without it.
    Raises serial.SerialException (or OSError) when the port is not there (retryable) and
    ValueError when the name or the options are wrong (not retryable).
    """
    if SIM_HANDLERS not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(SIM_HANDLERS)
    slice_ = min(timeout, READ_SLICE)
    try:
        port = serial.serial_for_url(
            url, baudrate=baudrate, timeout=slice_, write_timeout=timeout, exclusive=True
        )
    except (ValueError, TypeError) as err:
        log.debug("port=%s exclusive open refused (%s); opening shared", url, err)
        port = serial.serial_for_url(url, baudrate=baudrate, timeout=slice_, write_timeout=timeout)
    # The stubs type the result as SerialBase, which declares neither in_waiting nor
    # reset_input_buffer; every class serial_for_url can return defines both.
    return cast(Port, port)


def port_fd(port: Port) -> int | None:
    """The descriptor of a POSIX serial port (a tty, a pty), for os.read/os.write and poll(2)
    beside the replay socket; None for sim:// and socket:// ports, Windows COM ports (no
    descriptor, no select.poll) and macOS (its poll(2) does not take terminal devices)."""
    fileno = getattr(port, "fileno", None)
    if not (isinstance(port, serial.Serial) and callable(fileno) and hasattr(select, "poll")
            and sys.platform != "darwin"):
        return None
    return int(fileno())


def read_available(fd: int, size: int = READ_CHUNK) -> bytes:
    """What a POSIX port's driver holds, without waiting: b"" when nothing (pyserial leaves
    the descriptor O_NONBLOCK with VMIN 0, so an empty tty reads as 0 bytes or EAGAIN)."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return b""


class Link:
    """One open port: write a request, read exactly one answer line within TIMEOUT.

    On a POSIX port a request is one os.write and an answer one poll(2) and as few os.read
    calls as its length allows (usually one): pyserial's write and read add a select and
    timeout objects per call and an ioctl per in_waiting. pyserial still opens and configures
    the port (and drains it); on ports without a descriptor its read and write stay.
    """

    def __init__(self, port: Port, timeout: float, stop: threading.Event) -> None:
        self.port = port
        self._timeout = timeout
        self._slice = min(timeout, READ_SLICE)
        self._stop = stop
        self._buf = bytearray()
        self.fd = port_fd(port)
        self._wait: select.poll | None = None  # the port and the stop request
        self._patient: select.poll | None = None  # the port alone (stopping, yet waiting)
        if self.fd is not None:
            self._wait = select.poll()
            self._wait.register(self.fd, select.POLLIN)
            self._patient = select.poll()
            self._patient.register(self.fd, select.POLLIN)
            stop_fd = wake_fd(stop)
            if stop_fd is not None:
                self._wait.register(stop_fd, select.POLLIN)

    @property
    def stopping(self) -> bool:
        """The process is stopping: a wait for an answer ends early (read_line returns)."""
        return self._stop.is_set()

    def ask(self, request: bytes) -> bytes:
        self.send(request)
        return self.read_line()

    def send(self, request: bytes) -> None:
        """Write a request whose answer is read later with read_line (one in flight)."""
        if self.fd is None:
            self.port.write(request)
            return
        view = memoryview(request)
        deadline = 0.0
        while view:
            try:
                view = view[os.write(self.fd, view):]
                continue
            except BlockingIOError:
                pass
            now = time.monotonic()  # the driver's output buffer is full: wait (bounded)
            deadline = deadline or now + self._timeout
            if now >= deadline:
                raise serial.SerialTimeoutException("write timeout")
            out = select.poll()
            out.register(self.fd, select.POLLOUT)
            out.poll(max(1, math.ceil((deadline - now) * 1000)))

    def read_line(self, *, patient: bool = False) -> bytes:
        """One line with its b'\\n'; what came before the deadline if none (b'' for silence).
        A stop request ends the wait early with b'', leaving what came of the line buffered,
        unless `patient` (the answer to a request already written, read on the way out)."""
        if self._wait is None:
            return self._read_line_port(patient)
        return self._read_line_fd(patient)

    def _complete(self) -> bytes | None:
        """A whole line off the buffer; the buffer itself once it is past MAX_LINE (a line
        that never ends is taken, and refused by the parser, rather than grown forever)."""
        buf = self._buf
        end = buf.find(b"\n")
        if end >= 0:
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            return line
        return self._take() if len(buf) > MAX_LINE else None

    def _read_line_fd(self, patient: bool) -> bytes:
        """First a read of what is there (in a polled reader's steady state the answer came
        while it slept), then poll(2) until the rest comes or TIMEOUT passes."""
        buf, fd = self._buf, self.fd
        wait = self._patient if patient else self._wait
        assert fd is not None and wait is not None  # noqa: S101 -- chosen by read_line
        deadline = 0.0
        ready = False  # poll(2) said the port is readable (or hung up)
        while True:
            if (line := self._complete()) is not None:
                return line
            chunk = read_available(fd)
            if chunk:
                buf += chunk
                ready = False
                continue
            if ready:  # pyserial's rule: readable, yet nothing to read
                raise serial.SerialException(
                    "device reports readiness to read but returned no data (device "
                    "disconnected or multiple access on port?)")
            if self._stop.is_set() and not patient:
                return b""  # cut short: what came stays buffered for a patient read (_finish)
            now = time.monotonic()
            deadline = deadline or now + self._timeout
            if now >= deadline:
                return self._take()
            events = wait.poll(max(1, math.ceil(min(deadline - now, self._slice) * 1000)))
            ready = any(item == fd for item, _ in events)

    def _read_line_port(self, patient: bool) -> bytes:
        """pyserial's way: the first read waits for one byte (the answer is rarely there yet);
        then one read takes all the driver holds. A typical answer costs two reads, where
        pyserial's readline makes one read per character."""
        buf = self._buf
        port = self.port
        deadline = 0.0
        want = 1
        while True:
            if (line := self._complete()) is not None:
                return line
            chunk = port.read(want)
            if chunk:
                buf += chunk
                want = port.in_waiting or 1
                continue
            if self._stop.is_set() and not patient:
                return b""  # cut short: what came stays buffered for a patient read (_finish)
            now = time.monotonic()
            if not deadline:
                deadline = now + self._timeout - self._slice
            if now >= deadline:
                return self._take()

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of what is buffered: the next read_line() starts there."""
        self._buf[:0] = data

    def take_buffered(self) -> bytes:
        """Bytes read past the last line returned (a stream's first frames): handed over."""
        return self._take()

    def _take(self) -> bytes:
        line = bytes(self._buf)
        self._buf.clear()
        return line

    def drain(self, in_flight: int = 0) -> None:
        """Realign after a bad answer: `r` and its one-line answer, then drop what is left.

        With `in_flight` requests still unanswered (pipelined reads), their answers come
        before the `ok` of `r`: lines are read until that `ok` (at most in_flight + 1 of them)
        or until the device goes quiet, and thrown away.
        """
        self.port.write(DRAIN)
        for _ in range(in_flight + 1):
            line = self.read_line()
            if not in_flight or not line or line.strip() == b"ok":
                break
        self.discard_input()

    def discard_input(self) -> None:
        self._buf.clear()
        try:
            self.port.reset_input_buffer()
        except _TERMIOS_ERRORS as err:  # not an OSError: a port gone away, said as pyserial's
            raise serial.SerialException(f"cannot flush the port: {err}") from err

    def close(self) -> None:
        self.port.close()
