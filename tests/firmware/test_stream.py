"""The firmware's stream mode on a simulated ATmega328P, read with PowMon's own decoder.

The harness logs every ADC conversion, so each reported value is compared with what the ADC
produced; times are judged by the board's own clock (micros(), 4 us steps at 16 MHz), never
by the test's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import pytest
import serial

from powmon.common.schema.readings import Flag
from powmon.readers.frames import Sample, StreamParams
from powmon.readers.stream_commands import StreamRefused
from tests.firmware.simboard import BAUD, FAST_BAUD, Built, SimBoard
from tests.helpers import wait_until
from tests.streams import StreamClient

pytestmark = pytest.mark.e2e

SINE = (2500.0, 1000.0, 50.0)  # offset mV, amplitude mV, Hz: an ACS712 on 50 Hz mains
JITTER_US = 8  # two steps of micros() (4 us at 16 MHz); the firmware stamps the tick itself


@contextmanager
def streaming(board: SimBoard) -> Iterator[tuple[SimBoard, StreamClient]]:
    """A started board and a stream client on its pty."""
    with board as port, serial.Serial(port, BAUD, timeout=0.2) as ser:
        yield board, StreamClient(ser)


def stream_counts(board: SimBoard, at_least: int) -> list[int]:
    """A0's conversions for the stream, once the harness's log (flushed every 20 ms) holds
    enough. The first is left out: `stream` settles the ADC with one conversion first."""

    def counts() -> list[int]:
        found = [count for channel, count in board.conversions()[1:] if channel == 0]
        return found if len(found) >= at_least else []

    return wait_until(counts, what=f"{at_least} conversions in the ADC log")


def check_timing(samples: list[Sample], params: StreamParams) -> None:
    """Numbers complete from 0; frames start per_frame periods apart by the device clock
    (exactly, but for micros()' resolution)."""
    assert [s.seq for s in samples] == list(range(len(samples)))
    starts = [s.device_us for s in samples if s.seq % params.per_frame == 0]
    step = params.per_frame * params.period_us
    assert all(abs(b - a - step) <= JITTER_US for a, b in pairwise(starts))


def test_every_value_is_the_adc_conversion_and_the_timing_is_the_timer(
    firmware: Built, tmp_path: Path
) -> None:
    """1000 Hz on a 50 Hz sine: each value is exactly the conversion the ADC made for that
    sample, no number is missing, and frames are 10 ms apart by the board's clock."""
    log = tmp_path / "adc.log"
    with streaming(SimBoard(firmware.elf, sine=SINE, adc_log=log)) as (board, client):
        params = client.start(1000)
        assert params == StreamParams(1000, 1000, 10)
        client.read_samples(1500)
        assert client.stop()
        counts = stream_counts(board, len(client.samples))
    samples = client.samples
    check_timing(samples, params)
    assert [s.raw for s in samples] == counts[: len(samples)]
    # Real values compared, not a constant: 20 samples per cycle of the sine give at least
    # 10 distinct counts whatever the phase (sin(a) == sin(180 - a) pairs them), and they
    # span nearly its whole swing (+-205 counts: cos(9 degrees) of it at the worst phase).
    assert len(set(counts)) >= 10
    assert max(counts) - min(counts) >= 380
    assert all(s.flags == 0 for s in samples)
    c = client.decoder.counters
    assert (c.corrupt, c.skipped, c.holes, c.stops) == (0, 0, 0, 1)


def test_avg_makes_each_sample_the_mean_of_its_conversions(
    firmware: Built, tmp_path: Path
) -> None:
    """`avg 4` then `stream 500`: each value is the mean of 4 consecutive conversions, flagged."""
    log = tmp_path / "adc.log"
    with streaming(SimBoard(firmware.elf, sine=SINE, adc_log=log)) as (board, client):
        assert client.link.ask(b"avg 4\n") == b"ok avg 4\r\n"
        params = client.start(500)
        client.read_samples(500)
        assert client.stop()
        counts = stream_counts(board, 4 * len(client.samples))
    check_timing(client.samples, params)
    means = [sum(counts[4 * k : 4 * k + 4]) / 4 for k in range(len(client.samples))]
    assert [s.raw for s in client.samples] == means
    assert all(s.flags == Flag.AVERAGED for s in client.samples)


def test_ac_mode_streams_the_rms_of_whole_mains_cycles(firmware: Built) -> None:
    """`mode ac 50 5`: at most 10 Hz (a 100 ms window per sample); each value is the RMS of
    the sine, amplitude / sqrt(2), within 2%, flagged ac_rms."""
    expected = SINE[1] / 5000 * 1024 / math.sqrt(2)
    with streaming(SimBoard(firmware.elf, sine=SINE)) as (_, client):
        assert client.link.ask(b"mode ac 50 5\n") == b"ok ac 50 5\r\n"
        with pytest.raises(StreamRefused) as refused:
            client.start(11)
        assert refused.value.max_hz == 10
        params = client.start(10)
        client.read_samples(8)
        assert client.stop()
    check_timing(client.samples, params)
    assert all(s.raw == pytest.approx(expected, rel=0.02) for s in client.samples)
    assert all(s.flags == Flag.AC_RMS for s in client.samples)


@pytest.mark.parametrize(
    ("setup", "limit"), [(b"", 4169), (b"avg 64\n", 109), (b"mode ac 60 3\n", 20)]
)
def test_rates_beyond_the_limits_are_refused_with_the_limit(
    firmware: Built, setup: bytes, limit: int
) -> None:
    """At 115200 baud 4169 Hz fit the wire; `avg 64` leaves 109 Hz of ADC time; an AC window
    of 3 cycles at 60 Hz allows 20 samples/s. One more is `err max M`; at M itself the board
    keeps up for a second: no sample lost."""
    with streaming(SimBoard(firmware.elf, sine=SINE)) as (_, client):
        if setup:
            assert client.link.ask(setup).startswith(b"ok ")
        assert client.link.ask(b"stream %d\n" % (limit + 1)) == b"err max %d\r\n" % limit
        params = client.start(limit)
        assert params.hz == limit
        client.read_samples(limit)
        assert client.stop()
    check_timing(client.samples, params)
    assert client.decoder.counters.holes == 0


def test_a_request_while_streaming_ends_the_stream_then_is_answered(firmware: Built) -> None:
    """`read` during a stream: the last frames, `ok stop N`, then the reading; request/answer
    works as before afterwards, and `stop` with no stream answers `ok stop 0`."""
    with streaming(SimBoard(firmware.elf, mv=2600)) as (_, client):
        client.start(200)
        client.read_samples(50)
        client.link.send(b"read\n")
        client.read_until(lambda: client.decoder.counters.stops == 1, what="ok stop")
        assert client.link.read_line() == b"532\r\n"
        assert client.link.ask(b"read\n") == b"532\r\n"
        assert client.link.ask(b"stop\n") == b"ok stop 0\r\n"
    assert [s.seq for s in client.samples] == list(range(len(client.samples)))
    assert all(s.raw == 532 for s in client.samples)


@pytest.mark.parametrize("fault", ["flip", "drop"])
def test_corrupted_and_dropped_bytes_are_counted_never_stored(
    firmware: Built, tmp_path: Path, fault: str
) -> None:
    """A flipped bit or a lost byte on the wire: one corrupt frame, a hole of exactly its
    samples, and every stored value is still the conversion of its own sample."""
    log = tmp_path / "adc.log"
    with streaming(SimBoard(firmware.elf, sine=SINE, adc_log=log)) as (board, client):
        client.start(1000)
        client.read_samples(300)
        getattr(board, fault)(45)  # a byte of some frame after the next one
        client.read_samples(300)
        assert client.stop()
        counts = stream_counts(board, client.samples[-1].seq + 1)
    c = client.decoder.counters
    assert (c.corrupt, c.holes, c.lost) == (1, 1, 10)
    numbers = [s.seq for s in client.samples]
    assert len(numbers) + c.lost == numbers[-1] + 1
    assert all(s.raw == counts[s.seq] for s in client.samples)


def test_a_reset_mid_stream_recovers_with_a_new_stream(firmware: Built) -> None:
    """The MCU resets while streaming: it comes back in request/answer mode; the host starts
    a new stream, numbered from 0 on a restarted clock, which the decoder counts as a reset."""
    with streaming(SimBoard(firmware.elf, mv=4000)) as (board, client):
        client.start(1000)
        client.read_samples(1200)
        board.reset()
        # Frames the old stream sent just before the reset may still be on their way: they
        # come in front of the answer, on its line (seen once under load: b'\xcc\xc0POWMON').
        client.link.discard_input()
        answer = client.link.ask(b"id\n")
        assert b"POWMON " in answer, answer  # alive, not streaming
        params = client.start(1000)
        client.read_samples(300)
        assert client.stop()
    first, second = client.rows(1), client.rows(2)
    assert [row[1] for row in second] == list(range(len(second)))
    assert second[0][2] < first[-1][2]
    assert client.decoder.counters.resets == 1
    check_timing([s for s in client.samples if s.stream == 2], params)
    assert {row[3] for row in first + second} == {819}  # 4000 mV


def test_at_a_million_baud_the_adc_is_the_limit_and_holds(
    firmware_fast: Built, tmp_path: Path
) -> None:
    """Built for 1,000,000 baud the wire carries 36,000 samples/s: the ADC budget, 7000 Hz, is
    the limit. At 7000 Hz for over a second no sample is lost and every value is the ADC's."""
    log = tmp_path / "adc.log"
    board = SimBoard(firmware_fast.elf, sine=SINE, adc_log=log)
    with board as port, serial.Serial(port, FAST_BAUD, timeout=0.2) as ser:
        client = StreamClient(ser)
        assert client.link.ask(b"stream 7001\n") == b"err max 7000\r\n"
        params = client.start(7000)
        assert params == StreamParams(7000, 143, 16)
        client.read_samples(8000)
        assert client.stop()
        counts = stream_counts(board, len(client.samples))
    check_timing(client.samples, params)
    assert client.decoder.counters.holes == 0
    assert [s.raw for s in client.samples] == counts[: len(client.samples)]
