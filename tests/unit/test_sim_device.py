"""The simulated Arduino's protocol engine and signal model (pure: bytes in, bytes out)."""

from __future__ import annotations

import math
import re
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powmon.sim.device import BOOT_CHATTER, Fault, SignalSpec, SimDevice

DC_2_5A = round((2.5 + 2.5 * 0.066) / 5.0 * 1024)  # 546: the formula of the brief, by hand


def lines(answer: bytes) -> list[bytes]:
    return answer.split(b"\r\n")[:-1]


def test_read_answers_raw_count_with_crlf() -> None:
    """`read ` (as the original host sends it) answers an integer ADC count and \\r\\n."""
    device = SimDevice(SignalSpec(amps=2.5))
    assert device.feed(b"read \n") == f"{DC_2_5A}\r\n".encode()
    assert device.sent == [DC_2_5A]


def test_idle_sensor_reads_midscale() -> None:
    """With no current the ACS712 sits at VREF/2, so the count is 512."""
    assert SimDevice(SignalSpec()).feed(b"read\n") == b"512\r\n"


def test_read_channel_n_and_range() -> None:
    """`read N` answers for channels 0..5; another channel or a non-number is an error."""
    device = SimDevice(SignalSpec(amps=2.5))
    for channel in range(6):
        assert device.feed(f"read {channel}\n".encode()) == f"{DC_2_5A}\r\n".encode()
    assert device.feed(b"read 6\n") == b"err\r\n"
    assert device.feed(b"read x\n") == b"err\r\n"
    assert device.feed(b"read 1 2\n") == b"err\r\n"
    assert len(device.sent) == 6


def test_drain_and_identity() -> None:
    """`r` answers one `ok` line; `id` names firmware version and board."""
    device = SimDevice(SignalSpec(), sensor_id="VIC")
    assert device.feed(b"r \n") == b"ok\r\n"
    assert device.feed(b"id\n") == b"POWMON 1.1.0 SIM-VIC stream\r\n"
    assert device.sent == []


def test_tolerates_cr_and_extra_spaces_but_not_case() -> None:
    """\\r\\n line ends and extra blanks are fine; commands are lower case as documented."""
    device = SimDevice(SignalSpec())
    assert device.feed(b"  read   3  \r\n") == b"512\r\n"
    assert device.feed(b"r\r\n") == b"ok\r\n"
    assert device.feed(b"READ\n") == b"err\r\n"


def test_lines_split_across_feeds_and_several_per_feed() -> None:
    """Bytes arrive in arbitrary pieces: only complete lines are answered, in order."""
    device = SimDevice(SignalSpec())
    assert device.feed(b"re") == b""
    assert device.feed(b"ad \nr \nid") == b"512\r\nok\r\n"
    assert device.feed(b"\n") == b"POWMON 1.1.0 SIM-SIM stream\r\n"


def test_avg_answers_mean_with_two_decimals() -> None:
    """`avg K` is acknowledged; reads then answer the mean of K samples with two decimals."""
    device = SimDevice(SignalSpec(amps=1.0, noise=0.2, seed=7))
    assert device.feed(b"avg 16\n") == b"ok avg 16\r\n"
    answer = device.feed(b"read\n")
    assert re.fullmatch(rb"\d+\.\d\d\r\n", answer)
    expected = (2.5 + 0.066) / 5.0 * 1024
    assert abs(float(answer) - expected) < 6  # 16 samples of 0.2 A noise: sd ~1.4 counts
    assert device.feed(b"avg 1\n") == b"ok avg 1\r\n"
    assert re.fullmatch(rb"\d+\r\n", device.feed(b"read\n"))


@pytest.mark.parametrize("bad", [b"avg 0\n", b"avg 65\n", b"avg\n", b"avg x\n", b"avg 2 3\n"])
def test_avg_out_of_range_is_error(bad: bytes) -> None:
    """K must be 1..64, one integer."""
    assert SimDevice(SignalSpec()).feed(bad) == b"err\r\n"


@pytest.mark.parametrize(("amps", "hz"), [(2.5, 50.0), (4.0, 60.0), (1.0, 50.0), (7.5, 60.0)])
def test_mode_ac_rms_matches_sine(amps: float, hz: float) -> None:
    """In AC mode a noiseless sine reads its RMS within 2% (in counts, around the offset)."""
    device = SimDevice(SignalSpec(amps=amps, ac_hz=hz))
    assert device.feed(f"mode ac {hz:g} 5\n".encode()) == f"ok ac {hz:g} 5\r\n".encode()
    answer = device.feed(b"read\n")
    assert re.fullmatch(rb"\d+\.\d\d\r\n", answer)
    expected = amps * 0.066 / 5.0 * 1024
    assert float(answer) == pytest.approx(expected, rel=0.02)
    assert device.sent == [float(answer)]


def test_mode_dc_returns_to_plain_samples() -> None:
    """`mode dc` goes back to integer samples; a DC signal has no RMS deviation in AC mode."""
    device = SimDevice(SignalSpec(amps=2.5))
    assert device.feed(b"mode ac 50 5\n") == b"ok ac 50 5\r\n"
    assert device.feed(b"read\n") == b"0.00\r\n"
    assert device.feed(b"mode dc\n") == b"ok dc\r\n"
    assert device.feed(b"read\n") == f"{DC_2_5A}\r\n".encode()


@pytest.mark.parametrize(
    "bad", [b"mode\n", b"mode ac\n", b"mode ac 0 5\n", b"mode ac 50 0\n", b"mode ac x 5\n",
            b"mode ac 50 256\n", b"mode dc 1\n", b"mode xx\n", b"mode ac 50.5 5\n",
            b"mode ac 1001 5\n", b"mode ac 1 3\n"],
)
def test_bad_mode_is_error(bad: bytes) -> None:
    """Mode needs `dc` or `ac HZ CYCLES`: integers, as the firmware, and a window <= 2 s."""
    assert SimDevice(SignalSpec()).feed(bad) == b"err\r\n"


def test_unknown_and_garbage_lines_answer_err_then_recover() -> None:
    """An unknown command, or a line with control or non-ASCII bytes, is `err`; then recovery."""
    device = SimDevice(SignalSpec())
    assert device.feed(b"hello\n") == b"err\r\n"
    assert device.feed(b"\xff\xfe\x00read\n") == b"err\r\n"
    assert device.feed(b"read\x0c\n") == b"err\r\n"
    assert device.feed(b"\tread\t0\r\n") == b"512\r\n"
    assert device.feed(b"read\n") == b"512\r\n"


def test_blank_line_is_ignored() -> None:
    """A bare line end gets no answer, so it cannot shift later answers."""
    device = SimDevice(SignalSpec())
    assert device.feed(b"\n\r\n  \n") == b""
    assert device.feed(b"r\n") == b"ok\r\n"


@pytest.mark.parametrize("chunk", [200, 7])
def test_overlong_input_is_discarded_up_to_newline(chunk: int) -> None:
    """No newline within 64 bytes: the line is dropped and answered `err` at its newline."""
    device = SimDevice(SignalSpec())
    data = b"read " * 30 + b"\nread\n"
    out = b"".join(device.feed(data[i : i + chunk]) for i in range(0, len(data), chunk))
    assert out == b"err\r\n512\r\n"


def test_line_of_exactly_64_bytes_is_kept() -> None:
    """A line that fits the 64-byte buffer with its newline is still a command."""
    device = SimDevice(SignalSpec())
    assert device.feed(b"read" + b" " * 59 + b"\n") == b"512\r\n"
    assert device.feed(b"read" + b" " * 60 + b"\n") == b"err\r\n"


def test_boot_resets_modes_and_returns_chatter() -> None:
    """boot() is the DTR reset: chatter out, avg and AC mode back to defaults."""
    device = SimDevice(SignalSpec(amps=2.5))
    device.feed(b"avg 4\nmode ac 50 5\nrea")
    assert device.boot() == BOOT_CHATTER
    assert device.feed(b"d\n") == b"err\r\n"  # the half line was dropped too
    assert device.feed(b"read\n") == f"{DC_2_5A}\r\n".encode()
    assert SimDevice(SignalSpec(boot_chatter=False)).boot() == b""


def _is_number(line: bytes) -> bool:
    try:
        float(line.decode("utf-8", errors="replace"))
    except ValueError:
        return False
    return True


def test_fault_garbage() -> None:
    """GARBAGE: random bytes ending in \\r\\n that no parser can take for a number."""
    device = SimDevice(SignalSpec(seed=1))
    for _ in range(50):
        device.inject(Fault.GARBAGE)
        answer = device.feed(b"read\n")
        assert answer.endswith(b"\r\n")
        assert answer[0] >= 0x80
        assert b"\n" not in answer[:-1]
        assert not _is_number(answer[:-2])
    assert device.sent == []
    assert device.feed(b"read\n") == b"512\r\n"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.NONNUMERIC, b"abc\r\n"),
        (Fault.PARTIAL, b"512"),
        (Fault.SILENCE, b""),
        (Fault.NON_UTF8, b"\xff512\xfe\r\n"),
    ],
)
def test_fault_answers(fault: Fault, expected: bytes) -> None:
    """Each fault spoils exactly the next read answer, which is then not in `sent`."""
    device = SimDevice(SignalSpec())
    device.inject(fault)
    assert device.feed(b"read\n") == expected
    assert device.feed(b"read\n") == b"512\r\n"
    assert device.sent == [512]


def test_non_utf8_fault_is_not_utf8() -> None:
    """NON_UTF8 must fail a strict decode (the host's non_utf8 path)."""
    device = SimDevice(SignalSpec())
    device.inject(Fault.NON_UTF8)
    with pytest.raises(UnicodeDecodeError):
        device.feed(b"read\n").decode("utf-8")


def test_fault_count_and_other_commands_untouched() -> None:
    """inject(count=N) spoils N reads; drain and id answers are never spoiled."""
    device = SimDevice(SignalSpec())
    device.inject(Fault.NONNUMERIC, 2)
    assert device.feed(b"r\nid\nread\nread\nread\n") == (
        b"ok\r\nPOWMON 1.1.0 SIM-SIM stream\r\nabc\r\nabc\r\n512\r\n"
    )
    with pytest.raises(ValueError, match="count"):
        device.inject(Fault.SILENCE, 0)


def test_periodic_fault() -> None:
    """every(fault, n) spoils every n-th read; every(fault, None) stops it."""
    device = SimDevice(SignalSpec())
    device.every(Fault.NONNUMERIC, 3)
    out = lines(device.feed(b"read\n" * 6))
    assert out == [b"512", b"512", b"abc", b"512", b"512", b"abc"]
    device.every(Fault.NONNUMERIC, None)
    assert lines(device.feed(b"read\n" * 3)) == [b"512"] * 3
    assert len(device.sent) == 7


def test_sent_matches_every_valid_answer_in_order() -> None:
    """`sent` is exactly the numbers answered as complete lines, in order, faults skipped."""
    device = SimDevice(SignalSpec(amps=3.0, noise=0.3, seed=11))
    device.feed(b"read\nread\n")
    device.inject(Fault.SILENCE)
    device.feed(b"avg 3\nread\nread\n")
    answers: list[float] = []
    for _ in range(4):
        answers += [float(x) for x in lines(device.feed(b"read\n"))]
    assert len(device.sent) == 7
    assert device.sent[-4:] == answers


def test_sample_formula_and_clipping() -> None:
    """raw = round((OFFSET_V + amps*SNS)/VREF*1024), clipped to the 10-bit range."""
    assert SimDevice(SignalSpec(amps=2.5)).sample(0.0) == DC_2_5A
    assert SimDevice(SignalSpec(amps=-2.5)).sample(0.0) == round((2.5 - 0.165) / 5 * 1024)
    assert SimDevice(SignalSpec(amps=100.0)).sample(0.0) == 1023
    assert SimDevice(SignalSpec(amps=-100.0)).sample(0.0) == 0
    custom = SignalSpec(amps=1.0, offset_v=1.65, sns=0.1, vref=3.3)
    assert SimDevice(custom).sample(0.0) == round((1.65 + 0.1) / 3.3 * 1024)


def test_ac_sample_follows_sine_of_rms_amplitude() -> None:
    """amps_inst = amps*sqrt(2)*sin(2*pi*f*t): peak at a quarter period, offset at zero."""
    device = SimDevice(SignalSpec(amps=2.0, ac_hz=50.0))
    assert device.sample(0.0) == 512
    peak = round((2.5 + 2.0 * math.sqrt(2) * 0.066) / 5 * 1024)
    assert device.sample(0.005) == peak
    assert device.sample(0.015) == 1024 - peak


def test_noise_is_seeded_and_has_the_given_spread() -> None:
    """Same seed, same samples; the spread in counts is noise*SNS/VREF*1024."""
    spec = SignalSpec(amps=1.0, noise=0.5, seed=42)
    a = [SimDevice(spec).sample(0.0) for _ in range(3)]
    one, two = SimDevice(spec), SimDevice(spec)
    assert [one.sample(0.0) for _ in range(500)] == [two.sample(0.0) for _ in range(500)]
    samples = [one.sample(0.0) for _ in range(2000)]
    assert statistics.pstdev(samples) == pytest.approx(0.5 * 0.066 / 5 * 1024, rel=0.1)
    assert len(set(a)) == 1  # a fresh device with the seed starts the same way


def test_simulated_clock_drives_the_signal() -> None:
    """The device samples at its clock's time: a quarter period reads the positive peak."""
    now = [0.005]
    device = SimDevice(SignalSpec(amps=2.0, ac_hz=50.0), clock=lambda: now[0])
    peak = round((2.5 + 2.0 * math.sqrt(2) * 0.066) / 5 * 1024)
    assert device.feed(b"read\n") == f"{peak}\r\n".encode()
    now[0] = 0.0
    assert device.feed(b"read\n") == b"512\r\n"


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=300), cut=st.integers(min_value=1, max_value=80))
def test_any_input_then_a_line_end_recovers(junk: bytes, cut: int) -> None:
    """Whatever arrives (noise, overflow, half commands), a line end then `r` answers `ok`."""
    device = SimDevice(SignalSpec(seed=0))
    for i in range(0, len(junk), cut):
        device.feed(junk[i : i + cut])
    assert device.feed(b"\nr\n").endswith(b"ok\r\n")
