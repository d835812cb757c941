"""Opening a port and the handshake, against real pyserial ports (sim:// URLs and a real pty)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
import serial

from powmon.common.errors import SettingsError
from powmon.common.schema.readings import Flag
from powmon.common.settings import load_settings
from powmon.readers.conversion import convert, convert_rms
from powmon.readers.handshake import NoAnswer, Wanted, handshake
from powmon.readers.link import Link, open_port, read_command
from powmon.readers.reader import ReaderConfig
from powmon.sim.device import SignalSpec, SimDevice
from powmon.sim.pty import PtySimulator
from tests.helpers import write_settings


def _name() -> str:
    """A board name of its own per test: the sim:// registry is process-wide."""
    return f"T{uuid.uuid4().hex[:8]}"


def _wanted(sensor: str, **kw: object) -> Wanted:
    base: dict[str, object] = {
        "sensor_id": sensor, "read_command": read_command(None), "timeout": 0.3, "avg": 1,
        "mode": "dc", "mains_hz": 50.0, "ac_cycles": 5,
    }
    base.update(kw)
    return Wanted(**base)  # type: ignore[arg-type]


def _link(url: str, timeout: float = 0.3) -> Link:
    return Link(open_port(url, 115200, timeout), timeout, threading.Event())


def test_plain_device_syncs_through_boot_chatter_and_identifies() -> None:
    """Boot chatter is skipped; the first valid answer is a reading; `id` gives the firmware."""
    name = _name()
    link = _link(f"sim://{name}?amps=2.5")
    try:
        agreed = handshake(link, _wanted(name), threading.Event())
    finally:
        link.close()
    assert agreed is not None
    assert agreed.firmware.startswith("POWMON ")
    assert agreed.flags == 0
    assert agreed.convert is convert
    assert agreed.first is not None
    raw, ts_ns = agreed.first
    assert 540 <= raw <= 560  # 2.5 A on an ACS712-30A around 512
    assert ts_ns > 0


def test_avg_is_configured_and_flagged_only_when_acknowledged() -> None:
    """`avg K` acknowledged: readings carry AVERAGED; the sync answer is not published."""
    name = _name()
    link = _link(f"sim://{name}?amps=1")
    try:
        agreed = handshake(link, _wanted(name, avg=8), threading.Event())
        assert agreed is not None
        assert agreed.flags == Flag.AVERAGED
        assert agreed.first is None  # it was a single sample, not a mean
        # The device answers means from now on, and the link is aligned: one answer per ask.
        assert link.ask(b"read \n").endswith(b"\r\n")
    finally:
        link.close()


def test_unsupported_avg_is_not_claimed() -> None:
    """A device that refuses `avg` (here: out of its range) gives plain, unflagged readings."""
    name = _name()
    link = _link(f"sim://{name}?amps=1")
    try:
        agreed = handshake(link, _wanted(name, avg=65), threading.Event())
    finally:
        link.close()
    assert agreed is not None
    assert agreed.flags == 0


def test_ac_mode_switches_to_rms_conversion() -> None:
    """`mode ac HZ CYCLES` acknowledged: answers are RMS counts, converted by convert_rms."""
    name = _name()
    link = _link(f"sim://{name}?amps=3&ac=50")
    try:
        agreed = handshake(link, _wanted(name, mode="ac", mains_hz=50.0, ac_cycles=2),
                           threading.Event())
        assert agreed is not None
        assert agreed.convert is convert_rms
        assert agreed.first is None
        answer = link.ask(b"read \n")
    finally:
        link.close()
    assert 35.0 < float(answer) < 46.0  # 3 A RMS = about 40.6 counts


def test_sync_gives_up_on_a_device_that_never_answers_a_number() -> None:
    """A port that only ever answers junk is a failed connect (NoAnswer), not an endless wait."""
    name = _name()
    link = _link(f"sim://{name}?amps=1&nonnumeric_every=1", timeout=0.05)
    try:
        with pytest.raises(NoAnswer, match="no valid answer"):
            handshake(link, _wanted(name, timeout=0.05, sync_seconds=0.3), threading.Event())
    finally:
        link.close()


def test_exclusive_open_keeps_a_second_reader_off_a_real_pty(tmp_path: Path) -> None:
    """Two readers on one board would split its answers; the second open fails instead."""
    with PtySimulator(SimDevice(SignalSpec(amps=1), "EX"), link=tmp_path / "tty") as sim:
        first = open_port(sim.path, 115200, 0.3)
        try:
            with pytest.raises(serial.SerialException):
                open_port(sim.path, 115200, 0.3)
        finally:
            first.close()


def test_sim_urls_resolve_without_importing_the_sim_package_first() -> None:
    """open_port registers 'powmon.sim' as a handler package, so sim:// just works."""
    port = open_port(f"sim://{_name()}?amps=1", 9600, 0.2)
    try:
        assert port.port is not None
        assert port.port.startswith("sim://")
    finally:
        port.close()
    assert serial.protocol_handler_packages.count("powmon.sim") == 1


def test_config_takes_port_override_and_refuses_unknown_sensor(tmp_path: Path) -> None:
    """--port overrides PORT; an unknown --sensor-id names the file and the known ids."""
    path = write_settings(
        tmp_path / "settings.yaml",
        [{"PORT": "COM4", "SENSORS_ID": "VIC"}, {"PORT": "COM14", "SENSORS_ID": "ATT",
                                                  "CHANNEL": 3}],
    )
    settings = load_settings(path)
    assert ReaderConfig.from_settings(settings, "VIC").port == "COM4"
    att = ReaderConfig.from_settings(settings, "ATT", "/dev/ttyACM1")
    assert att.port == "/dev/ttyACM1"
    assert att.wanted.read_command == b"read 3\n"
    with pytest.raises(SettingsError) as info:
        ReaderConfig.from_settings(settings, "NOPE")
    message = str(info.value)
    assert "settings.yaml" in message
    assert "'NOPE'" in message
    assert "'VIC'" in message
    assert "'ATT'" in message
