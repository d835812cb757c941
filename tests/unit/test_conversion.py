"""The original formulas, with over-range flagged instead of zeroed."""

from __future__ import annotations

import pytest

from powmon.common.schema.readings import Flag
from powmon.readers.conversion import Calibration, convert, convert_rms

CAL = Calibration()


def test_zero_current_at_mid_scale() -> None:
    """512 counts at 5 V / 1024 is the 2.5 V zero offset: no current."""
    volts, amps, watts, flags = convert(512, CAL)
    assert (volts, amps, watts, flags) == (0.0, 0.0, 0.0, 0)


def test_original_formula() -> None:
    """volts = raw*VPP - OFFSET, amps = volts/SNS, watts = amps*VCC."""
    volts, amps, watts, flags = convert(531, CAL)
    assert volts == pytest.approx(531 * 5.0 / 1024 - 2.5)
    assert amps == pytest.approx(volts / 0.066)
    assert watts == pytest.approx(amps * 5.0)
    assert flags == 0


@pytest.mark.parametrize("raw", [0, 1023, 700, 300])
def test_over_range_is_flagged_not_zeroed(raw: int) -> None:
    """|amps| > MAX_AMPS keeps the figures and sets OVER_RANGE (the original wrote zeros)."""
    volts, amps, _watts, flags = convert(raw, CAL)
    assert abs(amps) > 10
    assert flags & Flag.OVER_RANGE
    assert volts == pytest.approx(raw * CAL.vpp - CAL.offset)


def test_rms_is_not_offset_again() -> None:
    """An RMS deviation already excludes the offset; it is flagged AC_RMS."""
    volts, amps, _watts, flags = convert_rms(10.0, CAL)
    assert volts == pytest.approx(10 * CAL.vpp)
    assert amps == pytest.approx(volts / CAL.sns)
    assert flags & Flag.AC_RMS
