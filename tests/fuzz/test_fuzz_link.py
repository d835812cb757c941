"""The serial answer parser and the line reader, fed arbitrary bytes from a real pyserial port.

Whatever a board (or line noise, or a wrong baud rate) sends, the reader must either get a
count in 0..1023 or a BadAnswer it can count and skip: nothing else may come out.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import cast

import pytest
import serial
from hypothesis import example, given
from hypothesis import strategies as st

from powmon.readers.link import ADC_MAX, MAX_LINE, BadAnswer, Link, Port, parse_answer
from tests.fuzz.strategies import fuzz

KINDS = {"timeout", "partial", "non_utf8", "non_numeric", "out_of_range"}
SLICE = 0.01  # port timeout: a read of an empty loop:// port returns after this

# Lines a serial port delivers: numbers in all shapes, noise, NULs, non-UTF-8, no line end.
number_like = st.builds(
    lambda pre, digits, frac, post, end: pre + digits + frac + post + end,
    st.sampled_from([b"", b" ", b"\t", b"\r", b"\x00", b"+", b"-"]),
    st.text("0123456789", min_size=0, max_size=12).map(str.encode),
    st.sampled_from([b"", b".", b".5", b".25", b"e3", b".123456789", b".1234567890"]),
    st.sampled_from([b"", b" ", b"\r", b"\xff", b"\x00"]),
    st.sampled_from([b"\r\n", b"\n", b"", b"\n\n", b"\r"]),
)
answers = st.binary(max_size=200) | number_like


@fuzz(500)
@given(answers)
@example(b"")
@example(b"1023\r\n")
@example(b"1024\r\n")
@example(b"\xff\xfe512\r\n")
@example(b"512")
@example(b"5" * 100_000 + b"\n")
@example(b"\x00" * 70 + b"\n")
@example("٣\r\n".encode())  # an Arabic-Indic digit: a digit to str.isdigit, not to the regex
def test_parse_answer_gives_a_count_or_a_bad_answer(line: bytes) -> None:
    """Any bytes: a number in 0..1023 from a complete line, or BadAnswer with a known kind."""
    try:
        value = parse_answer(line)
    except BadAnswer as bad:
        assert bad.kind in KINDS
        assert bad.line == line
        assert len(str(bad)) < 200  # loggable: the line is cut, whatever its size
        if not line:
            assert bad.kind == "timeout"
        elif not line.endswith(b"\n"):
            assert bad.kind == "partial"
    else:
        assert type(value) in (int, float)
        assert 0 <= value <= ADC_MAX
        assert line.endswith(b"\n")


@pytest.fixture(scope="module")
def loop_port() -> Iterator[Port]:
    """A real pyserial port (loop://: what is written comes back), reused by every example."""
    port = serial.serial_for_url("loop://", timeout=SLICE)
    yield cast(Port, port)  # the stubs say SerialBase; loop:// has all that Port needs
    port.close()


@fuzz(60)
@given(st.lists(answers, max_size=6))
@example([b"12\r\n34\r\n", b"\xff" * 300, b"56"])
@example([b"x" * (MAX_LINE + 1)])
def test_read_line_splits_any_stream_into_lines_without_losing_bytes(
    loop_port: Port, chunks: list[bytes]
) -> None:
    """Every byte comes out exactly once, split at each newline or at the garbage bound."""
    link = Link(loop_port, SLICE, threading.Event())
    loop_port.reset_input_buffer()
    data = b"".join(chunks)
    loop_port.write(data)
    lines: list[bytes] = []
    while True:
        line = link.read_line()
        if not line:
            break
        lines.append(line)
        with contextlib.suppress(BadAnswer):
            parse_answer(line)
    assert b"".join(lines) == data
    for line in lines[:-1]:
        # A piece without its newline is either over the bound or cut at a newline later on.
        assert line.endswith(b"\n") or len(line) > MAX_LINE
    for line in lines:
        assert line.count(b"\n") <= 1
        assert b"\n" not in line[:-1]
