"""What happens between opening a port and the first reading: open, sync, identify, configure.

Opening a port resets most Arduinos (DTR), and a booting board prints whatever its sketch or
bootloader likes, then ignores requests for a second or two. So the reader keeps asking `read`
and throws away everything until a valid answer comes back (bounded: no answer means a failed
connect, retried by the caller). Then the optional firmware extensions: `id` (old sketches
answer something else or nothing; they keep working), `avg K` and `mode ac HZ CYCLES`, each
applied only when the device acknowledges it, so the readings' flags never claim more than
the device did.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Final, NamedTuple

import serial

from powmon.common.errors import DeviceError
from powmon.common.logs import RateLimiter
from powmon.common.schema.readings import Flag
from powmon.readers.conversion import convert, convert_rms
from powmon.readers.emitter import Converter
from powmon.readers.link import (
    IDENT,
    BadAnswer,
    BadPort,
    Link,
    PortUnavailable,
    open_port,
    parse_answer,
)
from powmon.readers.stream_commands import Ident, parse_ident

log = logging.getLogger(__name__)
# A device that refuses a setting refuses it at every reconnect: say so once a minute, with a
# count, not once per reconnect of a flapping port.
_limiter = RateLimiter(60.0)

SYNC_ATTEMPTS: Final = 10  # sync budget in TIMEOUTs ...
SYNC_MIN_SECONDS: Final = 4.0  # ... but never less than an Arduino bootloader needs
FIRMWARE_PREFIX: Final = b"POWMON "


class NoAnswer(DeviceError):
    """The port opened but nothing valid came back in time: a failed connect, retried."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """What the settings ask of the device."""

    sensor_id: str
    read_command: bytes
    timeout: float
    avg: int
    mode: str
    mains_hz: float
    ac_cycles: int
    sync_seconds: float = SYNC_MIN_SECONDS  # how long boot chatter / silence may last

    @classmethod
    def sync_budget(cls, timeout: float) -> float:
        return max(SYNC_ATTEMPTS * timeout, SYNC_MIN_SECONDS)

    @property
    def plain(self) -> bool:
        """True when `read` means one raw sample, whatever state the device was left in."""
        return self.avg == 1 and self.mode == "dc"


@dataclass(frozen=True, slots=True)
class Agreed:
    """What the device accepted: how to read its answers from now on."""

    flags: int
    convert: Converter
    firmware: str
    first: tuple[float, int] | None  # the sync answer (raw, ts_ns) when it is a plain reading
    ident: Ident | None = None  # the parsed `id` answer; None for a sketch without one

    @property
    def streams(self) -> bool:
        """The device says it can stream (`stream` among its capabilities)."""
        return self.ident is not None and self.ident.streams

    @property
    def queues(self) -> bool:
        """Requests may be sent ahead: PowMon firmware reads them from its buffer one by one.
        A sketch without `id` (the original protocol) is asked one request at a time."""
        return self.ident is not None


def sync(link: Link, wanted: Wanted, stop: threading.Event) -> tuple[float, int] | None:
    """Ask `read` until a valid answer; return it with its request time (None if stopped).

    Lines that are not a number are boot chatter: skipped without asking again, since the
    answer may still follow them. Only silence (a booting board loses requests) asks again.
    """
    budget = wanted.sync_seconds
    deadline = time.monotonic() + budget
    discarded = 0
    link.discard_input()
    while not stop.is_set():
        ts_ns = time.time_ns()
        link.port.write(wanted.read_command)
        line = link.read_line()
        while line.endswith(b"\n"):
            try:
                raw = parse_answer(line)
            except BadAnswer:
                discarded += 1
            else:
                if discarded:
                    log.debug("sensor=%s skipped %d boot lines", wanted.sensor_id, discarded)
                return raw, ts_ns
            if time.monotonic() >= deadline:
                break
            line = link.read_line()
        if time.monotonic() >= deadline:
            raise NoAnswer(
                f"sensor {wanted.sensor_id!r} on {link.port.port!r}: no valid answer to "
                f"{wanted.read_command!r} within {budget:.1f}s ({discarded} lines skipped)"
            )
    return None


def identify(link: Link, wanted: Wanted) -> str:
    """The firmware id ('POWMON <version> <board>'), or '' for a sketch without `id`."""
    answer = link.ask(IDENT)
    if answer.startswith(FIRMWARE_PREFIX) and answer.endswith(b"\n"):
        firmware = answer.decode("utf-8", "replace").strip()
        log.debug("sensor=%s firmware=%r", wanted.sensor_id, firmware)  # reader logs it at INFO
        return firmware
    log.debug("sensor=%s no firmware id (answer %r); plain `read` device", wanted.sensor_id,
              answer[:40])
    link.drain()
    return ""


def _command(link: Link, request: bytes, ok: bytes) -> bool:
    answer = link.ask(request).strip()
    if answer.startswith(ok):
        return True
    link.drain()
    return False


def configure(link: Link, wanted: Wanted) -> tuple[int, Converter]:
    """Apply AVG and MODE; return the flags and converter that match what was acknowledged."""
    flags = 0
    converter: Converter = convert
    if wanted.avg > 1:
        if _command(link, b"avg %d\n" % wanted.avg, b"ok avg %d" % wanted.avg):
            flags |= Flag.AVERAGED
        else:
            _limiter.log(log, logging.WARNING, "avg",
                         "sensor=%s device did not acknowledge 'avg %d'; readings are single "
                         "samples", wanted.sensor_id, wanted.avg)
    if wanted.mode == "ac":
        request = b"mode ac %s %d\n" % (f"{wanted.mains_hz:g}".encode(), wanted.ac_cycles)
        if _command(link, request, b"ok ac"):
            converter = convert_rms
        else:
            _limiter.log(log, logging.ERROR, "mode",
                         "sensor=%s device did not acknowledge %r; readings are instantaneous DC "
                         "samples, not RMS (update the firmware)", wanted.sensor_id,
                         request.strip())
    return flags, converter


def handshake(link: Link, wanted: Wanted, stop: threading.Event) -> Agreed | None:
    """Sync, identify and configure a freshly opened port; None if stopped meanwhile."""
    first = sync(link, wanted, stop)
    if first is None:
        return None
    link.drain()  # a late answer to an earlier probe must not pass for the next reading
    firmware = identify(link, wanted)
    flags, converter = configure(link, wanted)
    ident = parse_ident(firmware) if firmware else None
    return Agreed(flags, converter, firmware, first if wanted.plain else None, ident)


class Connection(NamedTuple):
    """A port opened and handshaken: the link to it, and what its device agreed to."""

    link: Link
    agreed: Agreed


def open_device(
    url: str, baudrate: int, wanted: Wanted, stop: threading.Event
) -> Connection | None:
    """Open a port and handshake with its device: how the reader, `powmon calibrate` and the
    probes of `powmon check-config` all reach a board. None if stopped meanwhile.

    Raises BadPort (a wrong name or option: not retryable), PortUnavailable (not there, taken,
    no permission), or, once it opened, NoAnswer, serial.SerialException or OSError from the
    handshake; the port is closed whenever no Connection is returned.
    """
    try:
        port = open_port(url, baudrate, wanted.timeout)
    except (ValueError, TypeError) as err:
        raise BadPort(url, err) from err
    except (serial.SerialException, OSError) as err:
        raise PortUnavailable(url, err) from err
    link = Link(port, wanted.timeout, stop)
    agreed = None
    try:
        agreed = handshake(link, wanted, stop)
    finally:
        if agreed is None:
            with contextlib.suppress(serial.SerialException, OSError):
                link.close()
    return None if agreed is None else Connection(link, agreed)
