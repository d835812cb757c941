"""The reader in stream mode, in-process: run() on a thread, a real sim:// board, real sockets.

What the board streamed (`device.streamed`: the samples of every intact frame, with the board's
own numbers and clock) is what a correct reader publishes, in order, with seq 0, 1, 2, ... and
timestamps spaced as the board's clock spaced the samples. On a real pty and real processes:
tests/e2e/test_reader_stream_e2e.py; on the firmware: tests/firmware/.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from powmon.common.errors import SettingsError
from powmon.common.schema.readings import Flag, Reading
from powmon.common.settings import load_settings
from powmon.readers.reader import ReaderConfig, run
from powmon.sim.device import Fault
from powmon.sim.stream import Streamed
from tests.helpers import wait_until, write_settings
from tests.readerrun import ReaderStarter, Running

STREAM: dict[str, Any] = {"STREAM": "on", "BUDRATE": 115200}
TOLERANCE_NS = 1_000_000  # a timestamp's spacing may differ from the board's by this much


def _wait_readings(r: Running, n: int, timeout: float = 15.0) -> None:
    seen = int(r.counter("readings"))
    wait_until(lambda: r.counter("readings") >= seen + n, timeout, what=f"{n} more readings")


def _assert_the_streamed_samples(r: Running) -> list[Reading]:
    """Published == streamed, in order; seq gapless; one session; timestamps increasing."""
    readings = r.bus.readings
    streamed: list[Streamed] = r.device.streamed
    assert [x.raw for x in readings] == [s.raw for s in streamed]
    assert [x.seq for x in readings] == list(range(len(readings)))
    assert len({x.session for x in readings}) == 1
    stamps = [x.ts_ns for x in readings]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    return readings


def _spacing_errors(readings: Sequence[Reading], streamed: Sequence[Streamed]) -> list[int]:
    """Per consecutive pair of one stream: timestamp spacing minus the board's spacing (ns)."""
    return [
        (b.ts_ns - a.ts_ns) - (d.device_us - c.device_us) * 1000
        for a, b, c, d in zip(readings, readings[1:], streamed, streamed[1:], strict=False)
        if c.stream == d.stream
    ]


def _counter_at_least(r: Running, key: str, n: int) -> Callable[[], bool]:
    return lambda: bool(r.counter(key) >= n)


def test_every_streamed_sample_is_published_in_order_timed_by_the_board(
    start_reader: ReaderStarter,
) -> None:
    """100 Hz: each reading is a sample the board sent, seq complete, timestamps spaced by the
    board's clock within 1 ms (judged from its own times, not this test's clock)."""
    r = start_reader("amps=2.5&noise=0.05&seed=3&drift=80", **STREAM)
    _wait_readings(r, 200)
    r.finish()
    readings = _assert_the_streamed_samples(r)
    errors = _spacing_errors(readings, r.device.streamed)
    within = sum(abs(e) <= TOLERANCE_NS for e in errors)
    assert within >= 0.95 * len(errors), sorted(errors)[:: max(1, len(errors) // 20)]
    final = r.bus.statuses[-1].counters
    assert (final["mode"], final["stream_hz"]) == ("stream", 100)
    assert final["readings"] == final["seq"] == len(readings)
    assert final["frames_corrupt"] == final["device_holes"] == final["resets"] == 0
    assert all(x.flags == 0 and x.amps == pytest.approx(2.5, abs=0.5) for x in readings)


def test_several_samples_a_frame_go_out_as_batches(start_reader: ReaderStarter) -> None:
    """1 kHz: frames of 10 samples; a wake-up's samples are one batch message."""
    r = start_reader("amps=1&seed=1", POLLING_DELAY=0.001, **STREAM)
    _wait_readings(r, 500)
    r.finish()
    _assert_the_streamed_samples(r)
    sizes = [len(b.readings) for b in r.bus.batches]
    assert max(sizes) >= 10
    assert sum(sizes) == len(r.bus.readings)


def test_corrupt_and_dropped_frames_are_counted_never_published(
    start_reader: ReaderStarter,
) -> None:
    """A corrupt frame, a lost frame and one that lost bytes: two counted corrupt, three holes
    named on the bus with their sample counts, none of their samples published."""
    r = start_reader("amps=2&noise=0.05&seed=4", POLLING_DELAY=0.002, **STREAM)
    _wait_readings(r, 50)
    faults = (
        (Fault.CORRUPT, "frames_corrupt", 1),
        (Fault.DROPFRAME, "device_holes", 2),
        (Fault.DROPBYTES, "frames_corrupt", 2),
    )
    for fault, key, n in faults:
        r.device.inject(fault)
        wait_until(_counter_at_least(r, key, n), 10, what=f"{key} >= {n}")
    _wait_readings(r, 50)
    r.finish()
    readings = _assert_the_streamed_samples(r)
    final = r.bus.statuses[-1].counters
    assert (final["frames_corrupt"], final["device_holes"]) == (2, 3)
    numbered = r.device.streamed[-1].seq + 1
    assert final["device_lost"] == numbered - len(readings) == 3 * 5  # 500 Hz: 5 a frame
    # Each loss is named by the message after it, before the first sample after the hole.
    named = [(b.seq, b.dropped) for b in r.bus.batches if b.dropped]
    assert [count for _, count in named] == [5, 5, 5]
    seqs = [s.seq for s in r.device.streamed]
    assert all(seqs[q] - seqs[q - 1] - 1 == count for q, count in named)


def test_a_reset_mid_stream_restarts_it_in_the_same_session(start_reader: ReaderStarter) -> None:
    """The board resets (boot chatter, clock from 0, no stream): the reader handshakes again and
    starts a new stream; seq goes on in the same session, timestamps keep increasing."""
    r = start_reader("amps=2.5&seed=5&micros0=4000000000", **STREAM)
    _wait_readings(r, 50)
    r.device.inject(Fault.RESET)
    wait_until(lambda: r.counter("resets") >= 1, 15, what="the restart")
    _wait_readings(r, 50)
    r.finish()
    _assert_the_streamed_samples(r)
    assert {s.stream for s in r.device.streamed} == {1, 2}
    final = r.bus.statuses[-1].counters
    assert (final["resets"], final["reconnects"], final["device_holes"]) == (1, 0, 0)


def test_a_rate_beyond_the_board_is_capped_at_its_limit_with_a_warning(
    start_reader: ReaderStarter, caplog: pytest.LogCaptureFixture
) -> None:
    """STREAM_HZ 5000 at 9600 baud: the board answers `err max 347`; the reader streams at 347
    Hz and says so at WARNING."""
    caplog.set_level(logging.INFO, logger="powmon.readers")
    r = start_reader("amps=1", STREAM="on", STREAM_HZ=5000, BUDRATE=9600)
    _wait_readings(r, 50)
    r.finish()
    assert r.bus.statuses[-1].counters["stream_hz"] == 347
    warned = [x.getMessage() for x in caplog.records if x.levelno == logging.WARNING]
    assert any("limit is 347 Hz" in m and "streaming at 347 Hz" in m for m in warned), warned


def test_averaged_samples_keep_their_fraction_and_flag(start_reader: ReaderStarter) -> None:
    """AVG 4: each streamed sample is a mean (1/64 counts) flagged averaged."""
    r = start_reader("amps=2&noise=0.3&seed=6", sensor={"AVG": 4}, **STREAM)
    _wait_readings(r, 30)
    r.finish()
    readings = _assert_the_streamed_samples(r)
    assert all(x.flags == Flag.AVERAGED for x in readings)
    assert any(x.raw != int(x.raw) for x in readings)


@pytest.mark.parametrize("firmware", ["1.0.0", "none"])
def test_auto_polls_a_board_that_cannot_stream(start_reader: ReaderStarter, firmware: str) -> None:
    """STREAM auto on firmware 1.0.0 (no `stream` in its id) and on the original protocol (no
    id at all): request/answer exactly as before, every answer published."""
    r = start_reader(f"amps=1&firmware={firmware}", STREAM="auto")
    _wait_readings(r, 20)
    r.finish()
    assert r.bus.statuses[-1].counters["mode"] == "poll"
    assert [x.raw for x in r.bus.readings] == r.device.sent
    assert r.device.streamed == []


def test_stream_off_polls_a_board_that_streams(start_reader: ReaderStarter) -> None:
    """STREAM off: the board could stream, the reader polls it."""
    r = start_reader("amps=1", STREAM="off")
    _wait_readings(r, 20)
    r.finish()
    assert r.bus.statuses[-1].counters["mode"] == "poll"
    assert r.device.streamed == []
    assert [x.raw for x in r.bus.readings] == r.device.sent


def test_stream_on_refuses_a_board_that_cannot_stream(tmp_path: Path) -> None:
    """STREAM on and an `id` without `stream`: a SettingsError naming the key, the port and
    the id (the process exits 2 with that line)."""
    entry = {"PORT": "sim://OLDFW?amps=1&firmware=1.0.0", "SENSORS_ID": "OLDFW"}
    path = write_settings(tmp_path / "settings.yaml", [entry], STREAM="on")
    config = ReaderConfig.from_settings(load_settings(path), "OLDFW")
    with pytest.raises(SettingsError, match=r"STREAM: is 'on'.*does not stream.*POWMON 1\.0\.0"):
        run(config, threading.Event())
