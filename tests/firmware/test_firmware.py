"""The real firmware on a simulated ATmega328P, spoken to over a real pty with pyserial."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import serial

from powmon.readers.stream_commands import parse_ident
from tests.firmware.simboard import BAUD, Built, SimBoard, ideal_count

pytestmark = pytest.mark.e2e

SINE = (2500.0, 1000.0, 50.0)  # offset mV, amplitude mV, Hz: an ACS712 output on 50 Hz mains


@contextmanager
def connected(board: SimBoard) -> Iterator[serial.Serial]:
    """A started board and a pyserial port on its pty, both closed at exit."""
    with board as port, serial.Serial(port, BAUD, timeout=5) as ser:
        yield ser


def ask(ser: serial.Serial, request: bytes) -> str:
    """Send one request, return its one answer line without the \\r\\n it must end with."""
    ser.write(request)
    answer = ser.readline()
    assert answer.endswith(b"\r\n"), f"{request!r} got {answer!r}"
    return answer[:-2].decode("ascii")


@pytest.mark.parametrize("mv", [0, 2500, 2600, 5000])
def test_read_answers_the_raw_adc_count(firmware: Built, mv: int) -> None:
    """`read` answers an integer within 1 LSB of the ideal count for the voltage on A0."""
    with connected(SimBoard(firmware.elf, mv=mv)) as ser:
        assert ask(ser, b"r \n") == "ok"
        answer = ask(ser, b"read \n")
    assert re.fullmatch(r"\d+", answer), answer
    assert abs(int(answer) - ideal_count(mv)) <= 1


def test_read_n_selects_the_analog_input(firmware: Built) -> None:
    """`read N` reads AN; a channel beyond A5 is an error, not a reading of something else."""
    with connected(SimBoard(firmware.elf, inputs={0: 1000.0, 3: 4000.0})) as ser:
        three = int(ask(ser, b"read 3\n"))
        zero = int(ask(ser, b"read 0\n"))
        assert ask(ser, b"read 6\n") == "err"
    assert abs(three - ideal_count(4000)) <= 1
    assert abs(zero - ideal_count(1000)) <= 1


def test_ac_mode_answers_the_rms_of_a_50hz_sine(firmware: Built) -> None:
    """`mode ac 50 5` makes `read` answer the RMS around the mean: amplitude / sqrt(2)."""
    expected = SINE[1] / 5000 * 1024 / math.sqrt(2)
    with connected(SimBoard(firmware.elf, sine=SINE)) as ser:
        assert ask(ser, b"mode ac 50 5\n") == "ok ac 50 5"
        answer = ask(ser, b"read\n")
        assert ask(ser, b"mode dc\n") == "ok dc"
        plain = ask(ser, b"read\n")
    assert re.fullmatch(r"\d+\.\d\d", answer), answer
    assert float(answer) == pytest.approx(expected, rel=0.02)
    assert re.fullmatch(r"\d+", plain), plain


def test_ac_mode_on_a_steady_input_is_zero(firmware: Built) -> None:
    """A constant voltage has no AC component, whatever its DC level."""
    with connected(SimBoard(firmware.elf, mv=3300)) as ser:
        assert ask(ser, b"mode ac 60 3\n") == "ok ac 60 3"
        assert ask(ser, b"read\n") == "0.00"


def test_avg_answers_the_mean_with_two_decimals(firmware: Built) -> None:
    """`avg 8` makes `read` answer the mean of 8 samples, close to the input's count."""
    with connected(SimBoard(firmware.elf, mv=2600)) as ser:
        assert ask(ser, b"avg 8\n") == "ok avg 8"
        answer = ask(ser, b"read\n")
        assert ask(ser, b"avg 1\n") == "ok avg 1"
        single = ask(ser, b"read\n")
    assert re.fullmatch(r"\d+\.\d\d", answer), answer
    assert abs(float(answer) - ideal_count(2600)) <= 1
    assert re.fullmatch(r"\d+", single), single


def test_id_names_the_firmware_and_its_capabilities(firmware: Built) -> None:
    """`id` answers POWMON, a semantic version, a board id, then capability words: `stream`."""
    with connected(SimBoard(firmware.elf)) as ser:
        answer = ask(ser, b"id\n")
    assert re.fullmatch(r"POWMON \d+\.\d+\.\d+ \S+( \S+)*", answer), answer
    ident = parse_ident(answer)
    assert ident is not None and ident.streams


def test_garbage_and_an_overlong_line_do_not_wedge_it(firmware: Built) -> None:
    """Binary junk and a 200-byte line each get `err`; the next `read` is answered right."""
    with connected(SimBoard(firmware.elf, mv=2600)) as ser:
        assert ask(ser, b"\xff\x00\x1b[2J\x80garbage\n") == "err"
        assert ask(ser, b"read " + b"9" * 200 + b"\n") == "err"
        answer = ask(ser, b"read \n")
    assert abs(int(answer) - ideal_count(2600)) <= 1


@pytest.mark.parametrize(
    "request_line",
    [b"hello\n", b"avg 0\n", b"avg 65\n", b"avg -1\n", b"mode ac 0 5\n", b"mode ac 50\n",
     b"mode ac 50 200\n", b"mode xx\n", b"read 1 2\n", b"r r\n"],
)
def test_bad_requests_answer_err(firmware: Built, request_line: bytes) -> None:
    """Unknown commands and out-of-range arguments answer `err` and change nothing."""
    with connected(SimBoard(firmware.elf, mv=1000)) as ser:
        assert ask(ser, request_line) == "err"
        assert abs(int(ask(ser, b"read\n")) - ideal_count(1000)) <= 1


def test_blank_lines_and_crlf_are_tolerated(firmware: Built) -> None:
    """Blank lines get no answer, so the next answer is the next request's; \\r and spaces pass."""
    with connected(SimBoard(firmware.elf, mv=5000)) as ser:
        ser.write(b"\n\r\n  \n")
        assert ask(ser, b"r\r\n") == "ok"
        assert ask(ser, b"  read 0  \r\n") == "1023"


def test_boards_run_side_by_side(firmware: Built) -> None:
    """Two simulated boards get their own ptys and each reads its own input."""
    with SimBoard(firmware.elf, mv=1000) as port_a, SimBoard(firmware.elf, mv=4000) as port_b:
        assert port_a != port_b
        with (
            serial.Serial(port_a, BAUD, timeout=5) as a,
            serial.Serial(port_b, BAUD, timeout=5) as b,
        ):
            assert abs(int(ask(a, b"read\n")) - ideal_count(1000)) <= 1
            assert abs(int(ask(b, b"read\n")) - ideal_count(4000)) <= 1


def test_simboard_stops_the_harness_at_exit(firmware: Built) -> None:
    """Leaving the context ends the child process, so no simulator outlives its test."""
    board = SimBoard(firmware.elf)
    with board:
        assert board.popen is not None
        assert board.popen.poll() is None
    assert board.popen.poll() is not None


def test_port_can_be_closed_and_reopened(firmware: Built) -> None:
    """A host that reconnects (reader restart) finds the board still answering on the same pty."""
    with SimBoard(firmware.elf, mv=2600) as port:
        for _ in range(2):
            with serial.Serial(port, BAUD, timeout=5) as ser:
                assert ask(ser, b"r \n") == "ok"
                assert abs(int(ask(ser, b"read \n")) - ideal_count(2600)) <= 1
