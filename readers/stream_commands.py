"""The host's side of the stream commands: does the device stream, start it, stop it.

A device that streams says so in its `id` answer (`POWMON 1.1.0 UNO-0000 stream`: words after
the board id are capabilities; older firmware has none and is polled with `read`). Starting
sends `stream HZ [CH]` and waits for `ok stream HZ PERIOD_US PER_FRAME`, skipping what a
previous stream or a booting board may still send; the bytes read past the answer are the
first frames, handed back for the decoder. Stopping sends `stop` and feeds the decoder until
its `ok stop COUNT` went through it, so the last frames are not lost, then gives the link
back what followed. These helpers use the port of a `Link` and know nothing of readings or
the bus.
"""

from __future__ import annotations

import re
import time
from typing import Final, NamedTuple

from powmon.common.errors import DeviceError
from powmon.readers.frames import FrameDecoder, Sample, StreamParams, parse_stream_ack
from powmon.readers.link import Link

CAPABILITY: Final = "stream"
STOP: Final = b"stop\n"
_IDENT: Final = re.compile(r"POWMON (\d+\.\d+\.\d+) (\S+)((?: \S+)*)")
_REFUSED: Final = re.compile(rb"err(?: max (\d{1,5}))?\Z")


class Ident(NamedTuple):
    """A parsed `id` answer."""

    version: str
    board: str
    capabilities: frozenset[str]

    @property
    def streams(self) -> bool:
        return CAPABILITY in self.capabilities


class StreamRefused(DeviceError):
    """The device answered `err` to `stream`: `max_hz` is its limit when it said one.

    Without a limit, the firmware does not know the command (or the arguments were wrong).
    """

    def __init__(self, message: str, max_hz: int | None) -> None:
        super().__init__(message)
        self.max_hz = max_hz


class NoStreamAnswer(DeviceError):
    """No answer to `stream` or `stop` in time: the device is gone, resetting or old."""


def parse_ident(answer: str | bytes) -> Ident | None:
    """`POWMON 1.1.0 UNO-0000 stream` -> Ident; None for anything else (an older sketch)."""
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else answer
    match = _IDENT.fullmatch(text.strip())
    if match is None:
        return None
    version, board, rest = match.groups()
    return Ident(version, board, frozenset(rest.split()))


def stream_command(hz: int, channel: int | None = None) -> bytes:
    """`stream HZ\\n` (A0) or `stream HZ CH\\n`."""
    if hz < 1:
        raise ValueError(f"stream rate must be >= 1 Hz, got {hz}")
    return b"stream %d\n" % hz if channel is None else b"stream %d %d\n" % (hz, channel)


def start_stream(
    link: Link, hz: int, channel: int | None, timeout: float
) -> tuple[StreamParams, bytes]:
    """Start streaming; return what the device acknowledged and the bytes that followed.

    Raises StreamRefused for `err` / `err max M`, NoStreamAnswer when no answer came within
    `timeout` seconds.
    """
    link.send(stream_command(hz, channel))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not link.stopping:
        line = link.read_line()
        params = parse_stream_ack(line)
        if params is not None:
            return params, link.take_buffered()
        refused = _REFUSED.search(line.rstrip())
        if refused is not None and line.endswith(b"\n"):
            limit = int(refused.group(1)) if refused.group(1) else None
            why = f"its limit is {limit} Hz" if limit is not None else "it does not stream"
            raise StreamRefused(f"device on {link.port.port!r} refused 'stream {hz}': {why}", limit)
    raise NoStreamAnswer(f"device on {link.port.port!r}: no answer to 'stream {hz}' in {timeout}s")


def stop_stream(link: Link, decoder: FrameDecoder, timeout: float) -> tuple[list[Sample], bool]:
    """Stop streaming: the samples that came before `ok stop`, fed through `decoder`, and
    whether `ok stop` came within `timeout` seconds (if not, the device is gone or reset)."""
    stops = decoder.counters.stops
    link.send(STOP)
    samples = decoder.feed(link.take_buffered())
    deadline = time.monotonic() + timeout
    port = link.port
    while decoder.counters.stops == stops:
        if time.monotonic() >= deadline:
            return samples, False
        chunk = port.read(port.in_waiting or 1)
        samples += decoder.feed(chunk) if chunk else decoder.flush()
    link.unread(decoder.take_rest())  # answers to later requests: the link's again
    return samples, True
