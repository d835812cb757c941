"""Raw ADC counts to volts, amps and watts: the original script's formulas, without its zeroing.

volts = raw * VPP - OFFSET; amps = volts / SNS; watts = amps * VCC. A reading whose |amps|
exceeds MAX_AMPS keeps its raw value and converted figures and gets the OVER_RANGE flag: the
original replaced it with zeros, which made a saturated sensor look like an idle load.
"""

from __future__ import annotations

from dataclasses import dataclass

from powmon.common.schema.readings import Flag
from powmon.common.settings import SensorSettings


@dataclass(frozen=True, slots=True)
class Calibration:
    """The per-sensor constants of the conversion."""

    vpp: float = 5.0 / 1024
    offset: float = 2.5
    sns: float = 0.066
    vcc: float = 5.0
    max_amps: float = 10.0

    @classmethod
    def from_sensor(cls, sensor: SensorSettings) -> Calibration:
        return cls(sensor.vpp, sensor.offset, sensor.sns, sensor.vcc, sensor.max_amps)


def convert(raw: float, cal: Calibration, flags: int = 0) -> tuple[float, float, float, int]:
    """Return (volts, amps, watts, flags) for one raw ADC count (or a mean of counts)."""
    volts = raw * cal.vpp - cal.offset
    amps = volts / cal.sns
    if abs(amps) > cal.max_amps:
        flags |= Flag.OVER_RANGE
    return volts, amps, amps * cal.vcc, int(flags)


def convert_rms(
    rms_counts: float, cal: Calibration, flags: int = 0
) -> tuple[float, float, float, int]:
    """Convert an AC RMS deviation (in ADC counts, around the zero offset) to RMS figures.

    The offset was already removed on the device (RMS is taken around the mean), so it is not
    subtracted again; watts are apparent power at VCC, as in the DC formula.
    """
    volts = rms_counts * cal.vpp
    amps = volts / cal.sns
    if abs(amps) > cal.max_amps:
        flags |= Flag.OVER_RANGE
    return volts, amps, amps * cal.vcc, int(flags | Flag.AC_RMS)
