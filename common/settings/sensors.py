"""The readers' section: one SensorSettings per SENSORS entry, and the rules between entries.

An entry sets PORT and SENSORS_ID and may override the calibration and reading keys, which
otherwise come from the top level (or their sensor defaults, keys.SENSOR_DEFAULTS). The rules
that relate keys here: ids and ports unique across entries, and each entry's PUBLISH_INTERVAL
within half of STALL_TIMEOUT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from powmon.common import checks as c
from powmon.common.settings.keys import SENSOR, SENSOR_DEFAULTS, SENSOR_REQUIRED
from powmon.common.settings.problems import Found, shown_key


@dataclass(frozen=True, slots=True)
class SensorSettings:
    """One serial port and the calibration of the sensor behind it."""

    sensor_id: str
    port: str
    baudrate: int
    timeout: float
    polling_delay: float
    vpp: float
    offset: float
    sns: float
    vcc: float
    max_amps: float
    channel: int | None
    avg: int
    mode: str
    mains_hz: int
    ac_cycles: int
    stream: str = "auto"  # auto | on | off (docs/reader.md, "Stream mode")
    stream_hz: int | None = None  # None: 1 / POLLING_DELAY (readers/modes.py)
    read_pipeline: int = 4  # requests in flight in request/answer mode
    publish_interval: float = 0.1  # PUBLISH_INTERVAL: longest a reading waits to be published

    @property
    def stream_rate(self) -> int | None:
        """The `stream HZ` to ask for: STREAM_HZ, else 1 / POLLING_DELAY rounded (at least 1);
        0 for POLLING_DELAY 0 (the board's highest); None when the period is longer than the
        slowest stream (1 Hz) and STREAM_HZ does not say otherwise."""
        if self.stream_hz is not None:
            return self.stream_hz
        if self.polling_delay == 0:
            return 0
        if self.polling_delay > 1.0:
            return None
        return max(1, round(1 / self.polling_delay))


def check_sensors(found: Found, values: dict[str, Any]) -> tuple[SensorSettings, ...]:
    """The SENSORS entries that passed their checks, each entry's problems added to `found`."""
    entries = values["SENSORS"]
    if not isinstance(entries, list) or not entries:
        found.fail("SENSORS", "a non-empty list of {PORT, SENSORS_ID} entries", entries)
        return ()
    checked = [(i, sensor_values(found, i, entry, values)) for i, entry in enumerate(entries)]
    sensors = [(i, _sensor(got)) for i, got in checked if got is not None]
    for kind, attr in (("SENSORS_ID", "sensor_id"), ("PORT", "port")):
        seen: dict[str, int] = {}
        for i, sensor in sensors:
            key = getattr(sensor, attr)
            if key in seen:
                found.add(
                    f"SENSORS[{i}].{kind}",
                    f"expected a unique value, got {key!r} again (first at SENSORS[{seen[key]}])",
                )
            seen.setdefault(key, i)
    if found.trusts("STALL_TIMEOUT"):  # by each entry's own index, failed entries skipped
        stall = values["STALL_TIMEOUT"]
        for i, sensor in sensors:
            if sensor.publish_interval * 2 > stall:  # readings count when published
                found.add(
                    f"SENSORS[{i}].PUBLISH_INTERVAL",
                    f"expected at most half of STALL_TIMEOUT ({stall:g} s), got "
                    f"{sensor.publish_interval:g}: a reader holding readings that long would "
                    "look stalled",
                )
    return tuple(sensor for _, sensor in sensors)


def _sensor(got: dict[str, Any]) -> SensorSettings:
    return SensorSettings(
        sensor_id=got["SENSORS_ID"], port=got["PORT"], baudrate=got["BUDRATE"],
        timeout=got["TIMEOUT"], polling_delay=got["POLLING_DELAY"], vpp=got["VPP"],
        offset=got["OFFSET"], sns=got["SNS"], vcc=got["VCC"], max_amps=got["MAX_AMPS"],
        channel=got["CHANNEL"], avg=got["AVG"], mode=got["MODE"], mains_hz=got["MAINS_HZ"],
        ac_cycles=got["AC_CYCLES"], stream=got["STREAM"], stream_hz=got["STREAM_HZ"],
        read_pipeline=got["READ_PIPELINE"], publish_interval=got["PUBLISH_INTERVAL"],
    )


def sensor_values(
    found: Found, i: int, entry: Any, top: dict[str, Any]
) -> dict[str, Any] | None:
    """One SENSORS entry checked, with every key it does not set inherited or defaulted;
    None (its problems added) if any of its keys is wrong."""
    at = f"SENSORS[{i}]"
    if not isinstance(entry, dict):
        found.fail(at, "a mapping with PORT and SENSORS_ID", entry)
        return None
    before = len(found.problems)
    for key in entry:
        if key not in SENSOR:
            known = ", ".join(SENSOR)
            found.add(f"{at}.{shown_key(key)}", f"not a sensor setting (known: {known}); typo?")
    for key in SENSOR_REQUIRED:
        if key not in entry:
            found.add(f"{at}.{key}", "required key is missing")
    got: dict[str, Any] = {}
    for key, check in SENSOR.items():
        if key in entry:
            try:
                got[key] = check(entry[key])
            except c.Bad as bad:
                found.fail(f"{at}.{key}", bad.expected, entry[key])
        else:
            got[key] = SENSOR_DEFAULTS[key] if key in SENSOR_DEFAULTS else top.get(key)
    return got if len(found.problems) == before else None
