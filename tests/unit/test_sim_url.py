"""The sim:// pyserial URL handler, through pyserial's own serial_for_url."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import serial

from powmon.readers.frames import StreamParams, parse_stop
from powmon.sim import protocol_sim
from powmon.sim.device import BOOT_CHATTER, Fault
from tests.streams import StreamClient

_names = itertools.count()
Open = Callable[..., protocol_sim.Serial]


@pytest.fixture
def name() -> Iterator[str]:
    """A board name no other test uses; its registry entry is removed afterwards."""
    board = f"T{next(_names)}"
    yield board
    protocol_sim.devices.pop(board, None)


@pytest.fixture
def open_sim() -> Iterator[Open]:
    """Open sim:// ports the way readers do; close them all at teardown."""
    if "powmon.sim" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("powmon.sim")
    ports: list[protocol_sim.Serial] = []

    def opener(url: str, **kwargs: Any) -> protocol_sim.Serial:
        options: dict[str, Any] = {"baudrate": 115200, "timeout": 0.5, **kwargs}
        port = serial.serial_for_url(url, **options)
        assert isinstance(port, protocol_sim.Serial)  # pyserial found our handler
        ports.append(port)
        return port

    yield opener
    for port in ports:
        port.close()


def ask(port: serial.SerialBase, request: bytes = b"read \n") -> bytes:
    port.write(request)
    return port.readline()


def test_open_read_values_match_device(open_sim: Open, name: str) -> None:
    """A sim:// port boots with chatter, then answers reads that the device lists in `sent`."""
    port = open_sim(f"sim://{name}?amps=2.5&ac=50&noise=0.02&seed=1", exclusive=True)
    assert port.readline() == BOOT_CHATTER
    values = [float(ask(port)) for _ in range(20)]
    assert values == protocol_sim.devices[name].sent
    assert all(0 <= v <= 1023 for v in values)
    assert ask(port, b"id\n") == f"POWMON 1.1.0 SIM-{name} stream\r\n".encode()


def test_boot_zero_has_no_chatter(open_sim: Open, name: str) -> None:
    """boot=0 opens silently: the first line is the first answer."""
    port = open_sim(f"sim://{name}?boot=0&amps=0")
    assert port.in_waiting == 0
    assert ask(port) == b"512\r\n"


def test_read_honours_timeout_and_nonblocking(open_sim: Open, name: str) -> None:
    """With nothing to read, read() returns b'' at the timeout; timeout=0 returns at once."""
    port = open_sim(f"sim://{name}?boot=0", timeout=0.05)
    assert port.read(1) == b""
    port.timeout = 0
    assert port.read(10) == b""
    port.write(b"r\n")
    assert port.in_waiting == 4
    assert port.read(10) == b"ok\r\n"


def test_reset_input_buffer_drops_what_arrived(open_sim: Open, name: str) -> None:
    """reset_input_buffer() empties the input: chatter and stale answers are gone."""
    port = open_sim(f"sim://{name}")
    port.write(b"read\nread\n")
    assert port.in_waiting > len(BOOT_CHATTER)
    port.reset_input_buffer()
    port.reset_output_buffer()
    port.flush()
    assert port.in_waiting == 0
    assert ask(port, b"r\n") == b"ok\r\n"


def test_disconnect_after_then_reopen(open_sim: Open, name: str) -> None:
    """After N answered reads the port fails like an unplugged USB device; reopening works."""
    url = f"sim://{name}?boot=0&disconnect_after=3"
    port = open_sim(url)
    answers = [ask(port) for _ in range(3)]
    assert answers == [b"512\r\n"] * 3
    with pytest.raises(serial.SerialException, match="disconnected"):
        port.write(b"read\n")
    with pytest.raises(serial.SerialException):
        port.read(1)
    port.close()
    again = open_sim(url)
    assert ask(again) == b"512\r\n"
    assert protocol_sim.devices[name].sent == [512] * 4  # the same board, replugged


def test_exclusive_open_refuses_a_second_opener(open_sim: Open, name: str) -> None:
    """exclusive=True locks the board, as pyserial's flock does for a real port."""
    first = open_sim(f"sim://{name}", exclusive=True)
    with pytest.raises(serial.SerialException, match="busy"):
        open_sim(f"sim://{name}", exclusive=True)
    first.close()
    assert open_sim(f"sim://{name}", exclusive=True).is_open


def test_unknown_parameter_is_named(open_sim: Open, name: str) -> None:
    """A typo in the URL fails the open with a ValueError naming the parameter."""
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) 'amp', 'nosie'"):
        open_sim(f"sim://{name}?amp=2&nosie=0.1")


@pytest.mark.parametrize(
    ("query", "culprit"),
    [("amps=x", "amps"), ("noise=-1", "noise"), ("boot=2", "boot"),
     ("garbage_every=0", "garbage_every"), ("ac=-50", "ac"), ("amps=1&amps=2", "twice")],
)
def test_bad_value_is_named(open_sim: Open, name: str, query: str, culprit: str) -> None:
    """A bad value fails the open with a ValueError naming the parameter."""
    with pytest.raises(ValueError, match=culprit):
        open_sim(f"sim://{name}?{query}")


def test_url_needs_a_board_name(open_sim: Open) -> None:
    """sim:// without a name cannot say which board it is."""
    with pytest.raises(ValueError, match="expected a URL like"):
        open_sim("sim://?amps=1")


@pytest.mark.parametrize(
    ("option", "spoiled"),
    [("garbage_every", None), ("nonnumeric_every", b"abc\r\n"),
     ("nonutf8_every", b"\xff512\xfe\r\n")],
)
def test_periodic_faults(open_sim: Open, name: str, option: str, spoiled: bytes | None) -> None:
    """`<fault>_every=N` spoils every N-th read answer; the others are clean."""
    port = open_sim(f"sim://{name}?boot=0&{option}=2")
    answers = [ask(port) for _ in range(6)]
    assert answers[0::2] == [b"512\r\n"] * 3
    for bad in answers[1::2]:
        assert bad != b"512\r\n"
        assert bad.endswith(b"\r\n")
        if spoiled is not None:
            assert bad == spoiled
    assert protocol_sim.devices[name].sent == [512] * 3


def test_partial_and_silence_every(open_sim: Open, name: str) -> None:
    """partial_every leaves a number without line end; silence_every answers nothing."""
    port = open_sim(f"sim://{name}?boot=0&partial_every=2", timeout=0.1)
    assert ask(port) == b"512\r\n"
    assert ask(port) == b"512"  # readline gives up at the timeout
    port.close()
    port = open_sim(f"sim://{name}?boot=0&silence_every=1", timeout=0.1)
    assert ask(port) == b""


def test_faults_on_demand_through_registry(open_sim: Open, name: str) -> None:
    """Tests reach the board behind an open port and inject faults into the next answers."""
    port = open_sim(f"sim://{name}?boot=0", timeout=0.1)
    device = protocol_sim.devices[name]
    device.inject(Fault.SILENCE)
    device.inject(Fault.NONNUMERIC)
    assert ask(port) == b""
    assert ask(port) == b"abc\r\n"
    assert ask(port) == b"512\r\n"


def test_paced_answers_take_wire_time(open_sim: Open, name: str) -> None:
    """pace=1 at 9600 baud: each exchange costs at least (request+answer)*10/9600 s."""
    port = open_sim(f"sim://{name}?boot=0&pace=1", baudrate=9600, timeout=2)
    started = time.monotonic()
    wire = 0
    for _ in range(20):
        answer = ask(port)
        assert answer == b"512\r\n"
        wire += len(b"read \n") + len(answer)
    assert time.monotonic() - started >= wire * 10 / 9600


def test_baud_option_paces_at_its_own_rate(open_sim: Open, name: str) -> None:
    """baud=N paces at N whatever the port's baudrate; a short timeout sees a cut line."""
    port = open_sim(f"sim://{name}?boot=0&baud=300", timeout=2)
    started = time.monotonic()
    assert ask(port, b"r\n") == b"ok\r\n"
    assert time.monotonic() - started >= 6 * 10 / 300


def test_write_after_close_raises(open_sim: Open, name: str) -> None:
    """A closed sim:// port refuses I/O like any pyserial port."""
    port = open_sim(f"sim://{name}")
    port.close()
    with pytest.raises(serial.PortNotOpenError):
        port.write(b"read\n")
    with pytest.raises(serial.PortNotOpenError):
        port.read(1)


def test_stream_with_url_faults_and_a_drifting_clock(open_sim: Open, name: str) -> None:
    """`sim://...?corrupt_every=7&dropframe_every=11&drift=-300&pace=1`: a paced stream whose
    spoiled frames are counted and never decoded; what decodes is what the board sent."""
    url = f"sim://{name}?amps=1&noise=0.1&seed=4&drift=-300&corrupt_every=7&dropframe_every=11"
    port = open_sim(url + "&pace=1&boot=0", timeout=0.2)
    client = StreamClient(port)
    assert client.start(2000) == StreamParams(2000, 500, 16)
    client.read_samples(3000)
    assert client.stop()
    device = protocol_sim.devices[name]
    assert client.rows() == [(s.stream, s.seq, s.device_us, s.raw) for s in device.streamed]
    c = client.decoder.counters
    spoiled = {n for n in range(1, device.frames + 1) if n % 7 == 0 or n % 11 == 0}
    assert c.holes == sum(1 for n in spoiled if n - 1 not in spoiled)
    assert c.corrupt == sum(1 for n in spoiled if n % 7 == 0)  # corrupt_every wins at 77
    count = parse_stop(client.lines[-1])
    assert count is not None and c.lost == count - len(client.samples)


def test_stream_limits_follow_the_port_baud_rate(open_sim: Open, name: str) -> None:
    """The board refuses what its line cannot carry: at 9600 baud at most 347 Hz."""
    port = open_sim(f"sim://{name}?boot=0", baudrate=9600)
    assert ask(port, b"stream 348\n") == b"err max 347\r\n"
    assert ask(port, b"stream 347\n") == b"ok stream 347 2882 16\r\n"


BAD_BOARD = [
    ("drift=abc", "drift"),
    ("drift=60000", "drift"),
    ("micros0=-1", "micros0"),
    ("adc_rate=0", "adc_rate"),
    ("reset_every=0", "reset_every"),
]


@pytest.mark.parametrize(("query", "culprit"), BAD_BOARD)
def test_bad_board_options_are_named(open_sim: Open, name: str, query: str, culprit: str) -> None:
    """The board options refuse bad values, naming them."""
    with pytest.raises(ValueError, match=culprit):
        open_sim(f"sim://{name}?{query}")
