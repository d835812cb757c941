"""The reader's loops in-process (run() on a thread): real sim:// ports, real ZeroMQ sockets.

The end-to-end tests cover the same ground with real processes and a real pty; these ones
steer the device precisely (faults, disconnect_after) and stay fast.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from powmon.common.logs import PAYLOAD_LOGGER
from powmon.common.schema.readings import Flag
from powmon.common.settings import load_settings
from powmon.readers.handshake import handshake
from powmon.readers.link import Link, open_port
from powmon.readers.polling import MAX_SILENT, Poller
from powmon.readers.reader import Reader, ReaderConfig
from powmon.sim import protocol_sim
from powmon.sim.device import Fault
from tests.helpers import wait_until, write_settings
from tests.readerrun import ReaderStarter, Running


def _assert_matches_device(r: Running, unpublished: int = 0) -> None:
    """Every published reading is the device's answer, in order; `unpublished` sync answers."""
    readings = r.bus.readings
    assert [x.seq for x in readings] == list(range(len(readings)))
    assert len({x.session for x in readings}) == 1
    assert [x.raw for x in readings] == r.device.sent[unpublished:]


def test_faults_are_counted_skipped_and_leave_no_gap(start_reader: ReaderStarter) -> None:
    """Garbage, non-numeric, partial, non-UTF-8 and silence: counted, skipped, seq unbroken."""
    r = start_reader("amps=2.5&noise=0.05&seed=3", TIMEOUT=0.1)
    wait_until(lambda: r.bus.counters().get("readings", 0) >= 20, 10)
    for fault in (Fault.GARBAGE, Fault.NONNUMERIC, Fault.PARTIAL, Fault.NON_UTF8, Fault.SILENCE):
        r.device.inject(fault)
    wait_until(lambda: r.bus.counters().get("bad_lines", 0) >= 4
               and r.bus.counters().get("timeouts", 0) >= 1, 10)
    seen = r.bus.counters()["readings"]
    wait_until(lambda: r.bus.counters()["readings"] >= seen + 20, 10)
    r.finish()
    final = r.bus.statuses[-1].counters
    assert final["bad_lines"] == 4
    assert final["timeouts"] == 1
    assert final["reconnects"] == 0
    assert final["readings"] == final["seq"] == len(r.bus.readings)
    _assert_matches_device(r)


def test_vanishing_device_is_reconnected_and_seq_continues(start_reader: ReaderStarter) -> None:
    """A device that disconnects every 30 reads is reopened each time; nothing is lost."""
    r = start_reader("amps=1&disconnect_after=30")
    wait_until(lambda: r.bus.counters().get("reconnects", 0) >= 3, 20)
    r.finish()
    final = r.bus.statuses[-1].counters
    assert final["reconnects"] >= 3
    assert final["disconnects"] >= 3
    assert final["bad_lines"] == 0
    _assert_matches_device(r)
    assert len(r.bus.readings) >= 90


def test_a_device_that_goes_silent_is_reopened(start_reader: ReaderStarter) -> None:
    """MAX_SILENT unanswered requests in a row count as a lost device: the port is reopened."""
    r = start_reader("amps=1", TIMEOUT=0.05)
    wait_until(lambda: r.bus.counters().get("readings", 0) >= 5, 10)
    r.device.inject(Fault.SILENCE, count=MAX_SILENT)
    wait_until(lambda: r.bus.counters().get("reconnects", 0) == 1, 15)
    seen = r.bus.counters()["readings"]
    wait_until(lambda: r.bus.counters()["readings"] > seen + 5, 10)
    r.finish()
    final = r.bus.statuses[-1].counters
    assert final["timeouts"] == MAX_SILENT
    _assert_matches_device(r)


def test_averaging_and_channel_reach_the_device_and_the_flags(start_reader: ReaderStarter) -> None:
    """AVG and CHANNEL settings are applied; every published reading says AVERAGED."""
    r = start_reader("amps=2&noise=0.2&seed=1", sensor={"AVG": 16, "CHANNEL": 2})
    wait_until(lambda: r.bus.counters().get("readings", 0) >= 20, 10)
    r.finish()
    assert r.bus.readings
    assert all(x.flags == Flag.AVERAGED for x in r.bus.readings)
    assert any(x.raw != int(x.raw) for x in r.bus.readings)  # means, not single samples
    # The sync answer was a single sample, so it was not published.
    _assert_matches_device(r, unpublished=1)


def test_ac_readings_are_rms_and_flagged(start_reader: ReaderStarter) -> None:
    """MODE ac: RMS answers converted with convert_rms; amps match the simulated RMS current."""
    r = start_reader("amps=4&ac=50", sensor={"MODE": "ac", "AC_CYCLES": 2})
    wait_until(lambda: r.bus.counters().get("readings", 0) >= 5, 10)
    r.finish()
    assert r.bus.readings
    assert all(x.flags == Flag.AC_RMS for x in r.bus.readings)
    assert all(x.amps == pytest.approx(4.0, rel=0.05) for x in r.bus.readings)


def test_over_range_keeps_raw_and_flags_it(start_reader: ReaderStarter) -> None:
    """A saturated sensor is reported as it reads (raw kept), flagged OVER_RANGE, never zeroed."""
    r = start_reader("amps=20", sensor={"MAX_AMPS": 5.0})
    wait_until(lambda: r.bus.counters().get("readings", 0) >= 3, 10)
    r.finish()
    assert r.bus.readings
    assert all(x.flags & Flag.OVER_RANGE for x in r.bus.readings)
    assert all(x.raw > 700 and x.amps > 5.0 for x in r.bus.readings)


def test_heartbeats_go_on_while_the_port_is_missing(
    start_reader: ReaderStarter, tmp_path: Path
) -> None:
    """No device: the reader keeps retrying and heartbeating 'disconnected', saying why (the
    port is not found) and that it waits for its port, and stops promptly."""
    port = tmp_path / "no-such-tty"
    r = start_reader("amps=1", sensor={"PORT": str(port)})
    wait_until(lambda: len(r.bus.all_statuses()) >= 3, 10)
    assert all(s.state == "disconnected" for s in r.bus.statuses)
    assert all(s.counters["connected"] is False for s in r.bus.statuses)
    assert all(s.counters["last_reading_ns"] == 0 for s in r.bus.statuses)
    running = [s for s in r.bus.statuses if s.reader is not None]
    assert running and all(s.reader is not None and s.reader.waiting_for_port for s in running)
    assert all(s.counters["problem"] == f"port not found: {str(port)!r}: No such file or "
               "directory" for s in running)
    r.finish()
    assert r.bus.readings == []


def test_payload_lines_are_logged_only_when_enabled(
    start_reader: ReaderStarter, caplog: pytest.LogCaptureFixture
) -> None:
    """LOG_LEVEL 2/3: one DEBUG line per reading on powmon.payload; nothing when it is off."""
    caplog.set_level(logging.DEBUG, logger=PAYLOAD_LOGGER)
    r = start_reader("amps=1")
    wait_until(lambda: r.bus.counters().get("readings", 0) >= 10, 10)
    r.finish()
    lines = [rec for rec in caplog.records if rec.name == PAYLOAD_LOGGER]
    assert len(lines) == r.bus.statuses[-1].counters["readings"]
    assert "seq=0 " in lines[0].getMessage()

    caplog.clear()
    caplog.set_level(logging.INFO, logger=PAYLOAD_LOGGER)
    r2 = start_reader("amps=1")
    wait_until(lambda: r2.bus.counters().get("readings", 0) >= 10, 10)
    r2.finish()
    assert not [rec for rec in caplog.records if rec.name == PAYLOAD_LOGGER]


PIPELINED: dict[str, Any] = {"POLLING_DELAY": 0.0, "READ_PIPELINE": 4, "BUDRATE": 115200}


def test_pipelined_reads_publish_every_answer_in_order(start_reader: ReaderStarter) -> None:
    """READ_PIPELINE 4 flat out on a paced link: every answer is one reading, in order, seq
    gapless; at most the 4 in flight at the stop are answered but not published."""
    r = start_reader("amps=1&noise=0.05&seed=2&pace=1", **PIPELINED)
    wait_until(lambda: r.bus.counters().get("readings", 0) >= 300, 15)
    r.finish()
    readings = r.bus.readings
    assert [x.seq for x in readings] == list(range(len(readings)))
    assert [x.raw for x in readings] == r.device.sent[: len(readings)]
    assert len(r.device.sent) - len(readings) <= 4
    stamps = [x.ts_ns for x in readings]
    assert stamps == sorted(stamps)


def test_a_bad_line_mid_pipeline_drains_and_recovers(start_reader: ReaderStarter) -> None:
    """Garbage with requests in flight: counted once, the answers in flight are drained (never
    published), and the pipeline fills again; what is published is the device's, in order."""
    r = start_reader("amps=1&noise=0.05&seed=8&pace=1", **PIPELINED)
    wait_until(lambda: r.bus.counters().get("readings", 0) >= 50, 15)
    r.device.inject(Fault.GARBAGE)
    wait_until(lambda: r.bus.counters().get("bad_lines", 0) >= 1, 10)
    seen = r.bus.counters()["readings"]
    wait_until(lambda: r.bus.counters()["readings"] >= seen + 100, 15)
    r.finish()
    readings = r.bus.readings
    assert [x.seq for x in readings] == list(range(len(readings)))
    raws = [x.raw for x in readings]
    it = iter(r.device.sent)
    assert all(any(raw == sent for sent in it) for raw in raws)  # in order, some skipped
    assert len(r.device.sent) - len(raws) <= 3 + 4  # drained once, in flight at the stop
    final = r.bus.statuses[-1].counters
    assert (final["bad_lines"], final["timeouts"], final["reconnects"]) == (1, 0, 0)


@pytest.mark.parametrize(("firmware", "depth"), [("1.1.0", 4), ("1.0.0", 4), ("none", 1)])
def test_requests_go_ahead_only_to_firmware_that_queues_them(
    firmware: str, depth: int, tmp_path: Path
) -> None:
    """Due at once (POLLING_DELAY 0): PowMon firmware gets READ_PIPELINE requests ahead; a
    sketch without `id` (the original protocol) one at a time."""
    entry = {"PORT": f"sim://Q{firmware}?amps=1&firmware={firmware}", "SENSORS_ID": "Q"}
    path = write_settings(tmp_path / "s.yaml", [entry], STREAM="off", **PIPELINED)
    config = ReaderConfig.from_settings(load_settings(path), "Q")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    stop = threading.Event()
    link = Link(open_port(config.port, config.baudrate, config.wanted.timeout), 1.0, stop)
    try:
        agreed = handshake(link, config.wanted, stop)
        assert agreed is not None
        poller = Poller(Reader(config, sock, stop).context(link), agreed)
        reads = protocol_sim.devices[f"Q{firmware}"].reads
        poller._fill()  # the step under test
        assert len(poller.in_flight) == depth
        assert protocol_sim.devices[f"Q{firmware}"].reads == reads + depth
    finally:
        link.close()
        sock.close(0)
        ctx.term()
