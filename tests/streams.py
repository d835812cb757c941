"""A host reading a stream from a real port in tests, with PowMon's own stream helpers.

    client = StreamClient(port)                 # a pyserial port on a pty, or a sim:// port
    params = client.start(1000)                 # `stream 1000`, its answer, the first frames
    client.read_until(lambda: len(client.samples) >= 500, what="500 samples")
    assert client.stop()                        # `stop`; True when `ok stop` came

Reads block on the port's timeout, so the wait has a deadline but needs no sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from powmon.readers.frames import FrameDecoder, Sample, StreamParams
from powmon.readers.link import Link, Port
from powmon.readers.stream_commands import start_stream, stop_stream
from tests.helpers import wait_until


class StreamClient:
    """Start, read and stop a stream on `port`, collecting samples and text lines."""

    def __init__(self, port: Port, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self.link = Link(port, timeout, threading.Event())
        self.decoder = FrameDecoder()
        self.samples: list[Sample] = []
        self.lines: list[bytes] = []

    def start(self, hz: int, channel: int | None = None) -> StreamParams:
        params, rest = start_stream(self.link, hz, channel, self.timeout)
        self.decoder.start(params)
        self.feed(rest)
        return params

    def feed(self, data: bytes) -> None:
        """Decode; after `ok stop` what follows is the link's again (answers to requests)."""
        self.samples += self.decoder.feed(data)
        self.lines += self.decoder.take_lines()
        if self.decoder.held:
            self.link.unread(self.decoder.take_rest())

    def pump(self) -> None:
        """One read: what the driver holds, or wait (up to the port timeout) for one byte."""
        self.feed(self.port.read(self.port.in_waiting or 1))

    def read_until(self, done: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
        def step() -> bool:
            self.pump()
            return done()

        wait_until(step, timeout=timeout, interval=0.0, what=what)

    def read_samples(self, n: int, timeout: float = 20.0) -> None:
        """Read until `n` more samples have come."""
        target = len(self.samples) + n
        self.read_until(lambda: len(self.samples) >= target, timeout, what=f"{n} more samples")

    def stop(self) -> bool:
        samples, acknowledged = stop_stream(self.link, self.decoder, self.timeout)
        self.samples += samples
        self.lines += self.decoder.take_lines()
        return acknowledged

    def rows(self, stream: int | None = None) -> list[tuple[int, int, int, float]]:
        """(stream, seq, device_us, raw) of every sample, or of one stream's."""
        return [
            (s.stream, s.seq, s.device_us, s.raw)
            for s in self.samples
            if stream is None or s.stream == stream
        ]
