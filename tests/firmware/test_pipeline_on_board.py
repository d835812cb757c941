"""PowMon's own reader, writer and `powmon run` against the real firmware on a simulated MCU."""

from __future__ import annotations

import itertools
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from powmon.base.text import parse_ts
from tests.firmware.simboard import BAUD, Built, SimBoard, ideal_count
from tests.helpers import Proc, data_rows, lost_rows, wait_until, write_settings

pytestmark = pytest.mark.e2e

VPP, OFFSET, SNS, VCC = 5.0 / 1024, 2.5, 0.066, 5.0
SINE = (2500.0, 1000.0, 50.0)  # offset, amplitude (mV), Hz: an ACS712 on a 50 Hz load


def _run_on_board(
    tmp_path: Path, spawn: Callable[..., Proc], port: str, count: int, **sensor: object
) -> list[dict[str, str]]:
    """`powmon run` with one sensor on `port`; returns the rows once `count` are stored."""
    settings = write_settings(
        tmp_path / "settings.yaml", [{"PORT": port, "SENSORS_ID": "MCU", **sensor}],
        BUDRATE=BAUD, TIMEOUT=2, POLLING_DELAY=0.02, VPP=VPP, OFFSET=OFFSET, SNS=SNS, VCC=VCC,
    )
    run = spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], "run")
    wait_until(lambda: len(data_rows(tmp_path / "data")) >= count, timeout=60,
               what=f"{count} rows from the simulated board")
    assert run.stop(signal.SIGTERM) == 0
    rows = data_rows(tmp_path / "data")
    assert sorted(int(r["seq"]) for r in rows) == list(range(len(rows)))  # replay may reorder
    return rows


def _check_conversion(row: dict[str, str]) -> None:
    """Stored volts, amps and watts follow from the stored raw count."""
    raw = float(row["raw"])
    volts = raw * VPP - OFFSET
    assert float(row["volts"]) == pytest.approx(volts, abs=1e-5)
    assert float(row["amps"]) == pytest.approx(volts / SNS, abs=1e-4)
    assert float(row["watts"]) == pytest.approx(volts / SNS * VCC, abs=1e-3)


@pytest.mark.parametrize("mv", [0, 2500, 5000])
def test_stored_counts_match_the_voltage_on_a0(
    firmware: Built, tmp_path: Path, spawn: Callable[..., Proc], mv: int
) -> None:
    """0 V, mid-scale and full scale: every stored raw count is within 1 LSB of the ideal."""
    with SimBoard(firmware.elf, mv=mv) as port:
        rows = _run_on_board(tmp_path, spawn, port, 20)
    for row in rows:
        assert abs(float(row["raw"]) - ideal_count(mv)) <= 1
        _check_conversion(row)


def test_single_samples_of_a_sine_stay_within_its_range(
    firmware: Built, tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """DC mode on a 50 Hz sine: each sample lies within the sine's extremes (+-1 LSB), and
    the samples do move (they are not all one value)."""
    offset, amplitude, _hz = SINE
    lo, hi = ideal_count(offset - amplitude), ideal_count(offset + amplitude)
    with SimBoard(firmware.elf, sine=SINE) as port:
        # 77 Hz: a stream at 50 Hz (1 / POLLING_DELAY) would sample the 50 Hz sine at one
        # phase only, exactly, which is right but would not show that samples move.
        rows = _run_on_board(tmp_path, spawn, port, 30, POLLING_DELAY=0.013)
    raws = [float(r["raw"]) for r in rows]
    assert all(lo - 1 <= raw <= hi + 1 for raw in raws)
    assert len(set(raws)) > 3
    for row in rows:
        _check_conversion(row)


def test_ac_mode_stores_the_rms_of_the_sine(
    firmware: Built, tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """MODE ac: the firmware's RMS over 5 cycles is within 2% of amplitude/sqrt(2)."""
    _offset, amplitude, _hz = SINE
    true_rms = amplitude / 5000.0 * 1024 / 2**0.5
    with SimBoard(firmware.elf, sine=SINE) as port:
        rows = _run_on_board(tmp_path, spawn, port, 5, MODE="ac", MAINS_HZ=50, AC_CYCLES=5)
    for row in rows:
        assert float(row["raw"]) == pytest.approx(true_rms, rel=0.02)
        assert "ac_rms" in row["flags"]
        assert float(row["amps"]) == pytest.approx(float(row["raw"]) * VPP / SNS, abs=1e-3)


def _more_rows(data: Path, n: int) -> Callable[[], bool]:
    return lambda: len(data_rows(data)) >= n


def test_a_stream_from_the_board_is_stored_as_the_adc_converted_it(
    firmware: Built, tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """`powmon run` streaming 1000 Hz from the firmware: every stored raw is the ADC's own
    conversion for its sample; a flipped bit and a lost byte each cost one frame, counted and
    named in gaps.csv (device_dropped, 10 samples), never stored; after an MCU reset the
    reader starts a new stream; seq complete in one session, timestamps increasing and 1 ms
    apart by the board's clock within each stream."""
    log = tmp_path / "adc.log"
    data = tmp_path / "data"
    board = SimBoard(firmware.elf, sine=SINE, adc_log=log)
    with board as port:
        settings = write_settings(
            tmp_path / "settings.yaml", [{"PORT": port, "SENSORS_ID": "MCU"}],
            BUDRATE=BAUD, TIMEOUT=1, POLLING_DELAY=0.001, STREAM="on", FLUSH_INTERVAL=0.1,
        )
        run = spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], "run")
        wait_until(_more_rows(data, 500), timeout=60, what="500 rows from the board")
        for fault in (board.flip, board.drop):
            fault(45)  # a byte of the frame after next: one frame spoiled
            wait_until(_more_rows(data, len(data_rows(data)) + 300), 30, what="300 more rows")
        board.reset()
        wait_until(_more_rows(data, len(data_rows(data)) + 500), 30, what="rows after a reset")
        assert run.stop(signal.SIGTERM) == 0
        conversions = [count for _, count in board.conversions()]
    rows = sorted(data_rows(data), key=lambda r: int(r["seq"]))
    assert [int(r["seq"]) for r in rows] == list(range(len(rows)))
    assert len({r["session"] for r in rows}) == 1
    stamps = [parse_ts(r["timestamp"]) for r in rows]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    gaps = lost_rows(data)
    assert [(g["count"], g["reason"]) for g in gaps] == [("10", "device_dropped")] * 2
    # The reset is the one long pause (TIMEOUT of silence): before it the first stream.
    cut = max(range(1, len(rows)), key=lambda i: stamps[i] - stamps[i - 1])
    first, second = [float(r["raw"]) for r in rows[:cut]], [float(r["raw"]) for r in rows[cut:]]
    # The ADC log: the handshake's `read`, the stream's settling conversion, then a
    # conversion per sample; the holes are the spoiled frames' samples.
    lost_before = {int(g["first_seq"]): int(g["count"]) for g in gaps}
    index, expected = 2, []
    for seq in range(cut):
        index += lost_before.get(seq, 0)
        expected.append(conversions[index])
        index += 1
    assert first == expected
    # The second stream is the log's tail, but for a sample converted at the stop and unsent.
    end = len(conversions)
    assert any(second == conversions[end - len(second) - j : end - j] for j in range(3))
    for part in (stamps[:cut], stamps[cut:]):
        spacing = [b - a for a, b in itertools.pairwise(part)]
        near = sum(abs(d - 1_000_000) <= 1_000_000 for d in spacing)
        assert near >= 0.95 * len(spacing)
