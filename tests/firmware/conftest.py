"""The firmware is built once per session; without the AVR toolchain or simavr the tests skip,
except where .ci/run installed them (POWMON_REQUIRE names `firmware`): there they fail."""

from __future__ import annotations

import pytest

from tests.firmware.simboard import FAST_BAUD, Built, FirmwareUnavailable, build
from tests.helpers import unavailable


@pytest.fixture(scope="session")
def firmware() -> Built:
    """firmware/build/powmon.elf and the powmon_sim harness, made (or found up to date) once."""
    try:
        return build()
    except FirmwareUnavailable as err:
        unavailable("firmware", str(err))



@pytest.fixture(scope="session")
def firmware_fast(firmware: Built) -> Built:
    """The firmware built for 1,000,000 baud (its own folder), with the same harness."""
    try:
        return build(baud=FAST_BAUD)
    except FirmwareUnavailable as err:
        unavailable("firmware", str(err))
