"""Host stream commands: `id` capabilities, starting and stopping, refusals and silence.

A streaming board is a sim:// port; an old sketch (`err` to everything new) and a silent
device are pyserial's own loop:// port, which hands back what was written to it.
"""

from __future__ import annotations

import threading
import uuid

import pytest
import serial

from powmon.readers.frames import FrameDecoder, StreamParams
from powmon.readers.link import Link, Port, open_port
from powmon.readers.stream_commands import (
    Ident,
    NoStreamAnswer,
    StreamRefused,
    parse_ident,
    start_stream,
    stop_stream,
    stream_command,
)


def _link(port: Port) -> Link:
    return Link(port, 0.3, threading.Event())


def _sim(query: str = "boot=0") -> Link:
    return _link(open_port(f"sim://C{uuid.uuid4().hex[:8]}?{query}", 115200, 0.3))


def _loop() -> Link:
    port = serial.serial_for_url("loop://", timeout=0.1)
    return _link(port)


def test_ident_names_version_board_and_capabilities() -> None:
    """Words after the board id are capabilities; firmware 1.0.0 had none and still parses."""
    assert parse_ident(b"POWMON 1.1.0 UNO-0042 stream\r\n") == Ident(
        "1.1.0", "UNO-0042", frozenset({"stream"})
    )
    old = parse_ident("POWMON 1.0.0 UNO-0000")
    assert old is not None and not old.streams
    assert parse_ident(b"532\r\n") is None
    assert parse_ident(b"POWMON x UNO") is None


def test_stream_command_bytes() -> None:
    """`stream HZ` for A0, `stream HZ CH` for another input; a rate below 1 Hz is refused."""
    assert stream_command(100) == b"stream 100\n"
    assert stream_command(100, 3) == b"stream 100 3\n"
    with pytest.raises(ValueError, match="rate"):
        stream_command(0)


def test_start_and_stop_a_stream() -> None:
    """start_stream returns what the board acknowledged; stop_stream the samples up to
    `ok stop`, and the link answers requests again afterwards."""
    link = _sim()
    try:
        params, rest = start_stream(link, 500, None, 2.0)
        assert params == StreamParams(500, 2000, 5)
        decoder = FrameDecoder(params)
        decoder.feed(rest)
        samples, acknowledged = stop_stream(link, decoder, 2.0)
        assert acknowledged
        assert [s.seq for s in samples] == list(range(len(samples)))
        assert link.ask(b"read\n") == b"512\r\n"
    finally:
        link.close()


def test_a_rate_beyond_the_limit_is_refused_with_it() -> None:
    """`err max M` becomes StreamRefused with max_hz = M."""
    link = _sim()
    try:
        with pytest.raises(StreamRefused, match="limit is 4169 Hz") as refused:
            start_stream(link, 5000, None, 2.0)
        assert refused.value.max_hz == 4169
    finally:
        link.close()


def test_an_old_sketch_refuses_without_a_limit() -> None:
    """A sketch without streams answers `err`: StreamRefused with no limit."""
    link = _loop()
    try:
        link.port.write(b"err\r\n")  # what an old sketch answers to the request below
        with pytest.raises(StreamRefused, match="does not stream") as refused:
            start_stream(link, 100, None, 2.0)
        assert refused.value.max_hz is None
    finally:
        link.close()


def test_a_stop_ends_the_wait_for_a_stream_answer() -> None:
    """Stopping while a silent device is asked to stream: the wait ends at once instead of
    at the hour-long deadline given here (the suite's timeout would fail a wait that long)."""
    stop = threading.Event()
    link = Link(serial.serial_for_url("loop://", timeout=0.1), 3600.0, stop)
    stop.set()
    try:
        assert link.stopping
        with pytest.raises(NoStreamAnswer):
            start_stream(link, 100, None, 3600.0)
    finally:
        link.close()


def test_no_answer_is_a_clear_error_and_a_stop_without_answer_says_so() -> None:
    """Silence: start_stream raises NoStreamAnswer; stop_stream reports it unacknowledged."""
    link = _loop()
    try:
        with pytest.raises(NoStreamAnswer, match="no answer to 'stream 100'"):
            start_stream(link, 100, None, 0.5)
        samples, acknowledged = stop_stream(link, FrameDecoder(), 0.5)
        assert (samples, acknowledged) == ([], False)
    finally:
        link.close()
