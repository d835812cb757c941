"""The status fields of issue 22: a reader's `problem` / `waiting_for_port` (heartbeat,
lifeline, supervisor's stall decision, health model, `powmon status` text) and the sinks'
per-sensor `gaps_by_sensor` / `lost_by_sensor` (sink core counters, health model)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from powmon.base.health import Expected, Health
from powmon.base.processes import pipeline
from powmon.common import lifeline
from powmon.common.errors import SchemaError
from powmon.common.lifeline import Beat, LifelineServer
from powmon.common.schema.readings import Measured, Reading, encode_batch
from powmon.common.schema.status import ReaderProgress, Status, decode_status, encode_status
from powmon.common.settings import load_settings
from powmon.sink.api import CoreConfig, Sink, Stored, StreamState
from powmon.sink.bookkeeping import SinkCore
from powmon.status import render
from powmon.supervisor.children import Child
from tests.helpers import wait_until, write_settings

S = 1_000_000_000
T0 = 1_800_000_000 * S
PROBLEM = "port not found: '/dev/ttyNOPE0': No such file or directory"


def _settings(tmp_path: Path) -> Path:
    return write_settings(
        tmp_path / "settings.yaml",
        [{"PORT": "sim://A", "SENSORS_ID": "A"}, {"PORT": "/dev/ttyNOPE0", "SENSORS_ID": "B"}],
        HEARTBEAT_INTERVAL=0.5, STALL_TIMEOUT=2, TIMEOUT=0.5,
    )


def _wire(status: Status) -> Status:
    return decode_status(encode_status(status))


def _reader_beat(ident: str, at_s: float, progress: ReaderProgress, **counters: Any) -> Status:
    return _wire(Status("reader", ident, 10, T0 + int(at_s * S), "running", counters,
                        reader=progress))


def test_a_readers_problem_and_waiting_for_port_travel_typed_in_its_heartbeat() -> None:
    """problem and waiting_for_port survive encode/decode as typed progress (and as counter
    keys for taps); a heartbeat without them (an older reader) decodes to '' / False; a
    wrongly typed one is a SchemaError, never a crash."""
    progress = ReaderProgress("s1", 0, 0, problem=PROBLEM, waiting_for_port=True)
    got = _wire(Status("reader", "B", 1, T0, "disconnected", {}, reader=progress))
    assert got.reader == progress
    assert got.counters["problem"] == PROBLEM and got.counters["waiting_for_port"] is True
    old = _wire(Status("reader", "B", 1, T0, "running", {"session": "s1", "seq": 3}))
    assert old.reader is not None
    assert (old.reader.problem, old.reader.waiting_for_port) == ("", False)
    for bad in ({"problem": 3}, {"waiting_for_port": "yes"}):
        with pytest.raises(SchemaError, match="bad reader problem"):
            _wire(Status("reader", "B", 1, T0, "running", {"session": "s1", **bad}))


@pytest.fixture
def server() -> Iterator[LifelineServer]:
    srv = LifelineServer()
    yield srv
    srv.close()


def test_the_lifeline_says_a_reader_is_waiting_for_its_port(server: LifelineServer) -> None:
    """`report(..., waiting=True)` arrives as a Beat with waiting set; plain beats do not."""
    env, token = server.issue()
    stop = threading.Event()
    line = lifeline.attach(stop, {lifeline.ENV: env})
    assert line is not None
    beats: list[Beat] = []

    def two() -> bool:
        beats.extend(server.read())
        return len(beats) >= 2

    try:
        line.report(0, "a1b2c3", 0, waiting=True)
        line.report(4, "a1b2c3", 4)
        wait_until(two, timeout=10, what="two beats")
    finally:
        line.close()
    assert beats == [Beat(token, 0, "a1b2c3", 0, waiting=True), Beat(token, 4, "a1b2c3", 4)]


@pytest.fixture
def reader_child(tmp_path: Path) -> Iterator[Child]:
    """The supervisor's Child of reader B, running a real (idle) process."""
    spec = next(s for s in pipeline(load_settings(_settings(tmp_path))) if s.ident == "B")
    child = Child(spec, (sys.executable, "-c", "import sys; sys.stdin.read()"), 5.0)
    child.popen = subprocess.Popen(child.argv, stdin=subprocess.PIPE)
    child.started_at = child.last_progress = 0.0
    try:
        yield child
    finally:
        assert child.popen.stdin is not None
        child.popen.stdin.close()
        assert child.popen.wait(timeout=10) == 0


def test_a_reader_waiting_for_its_port_is_not_stalled_until_its_beats_stop(
    reader_child: Child,
) -> None:
    """Waiting beats with no readings keep a reader from being judged stalled, however long;
    once they stop it is stalled after STALL_TIMEOUT; a beat that no longer says waiting
    (port open) and brings no reading leaves the stall clock running from the last one."""
    child, stall = reader_child, 2.0
    for t in range(11):
        child.note_progress(Beat(child.token, 0, "s1", 0, waiting=True), float(t))
    waiting = [child.waiting]
    assert not child.stalled(10.0 + stall - 0.1, stall)
    assert child.stalled(10.0 + stall + 0.1, stall)
    child.note_progress(Beat(child.token, 0, "s1", 0), 11.0)
    waiting.append(child.waiting)
    assert waiting == [True, False]
    assert child.stalled(10.0 + stall + 0.1, stall), "a beat without readings is no progress"


def test_without_waiting_a_reader_with_no_readings_stalls(reader_child: Child) -> None:
    """The old rule for a reader whose port is open: beats without new readings, stalled."""
    child = reader_child
    for t in range(5):
        child.note_progress(Beat(child.token, 7, "s1", 7), float(t))
    assert child.stalled(2.5, 2.0)


def test_health_and_the_status_table_show_the_problem(tmp_path: Path) -> None:
    """A reader up, with no reading and a problem: the sensor's `problem` and
    `waiting_for_port`, the problem in the verdict, and a line of the text table."""
    h = Health(Expected.from_settings(load_settings(_settings(tmp_path))))
    waiting = ReaderProgress("s1", problem=PROBLEM, waiting_for_port=True)
    h.feed(_reader_beat("B", 10.0, waiting, connected=False), 10.0)
    h.feed(_reader_beat("A", 10.0, ReaderProgress("s2", 5, 5, last_reading_ns=T0 + 10 * S),
                        connected=True), 10.0)
    report = h.to_json(10.1)
    b, a = report["sensors"]["B"], report["sensors"]["A"]
    assert (b["problem"], b["waiting_for_port"]) == (PROBLEM, True)
    assert (a["problem"], a["waiting_for_port"]) == (None, False)
    assert f"sensor B: no reading yet: {PROBLEM}" in report["problems"]
    text = render(report)
    assert f"  B: {PROBLEM}; retrying\n" in text
    assert "  A: " not in text


def _writer_beat(**counters: Any) -> Status:
    return _wire(Status("writer", "writer", 11, T0, "running", counters))


def test_health_takes_gaps_and_lost_per_sensor_with_zero_for_none(tmp_path: Path) -> None:
    """With the writer's gaps_by_sensor / lost_by_sensor, every sensor gets a number (0 when
    the writer names none for it); without them (an older writer) they stay null."""
    h = Health(Expected.from_settings(load_settings(_settings(tmp_path))))
    h.feed(_writer_beat(gaps=1, lost=3, rows=9, gaps_by_sensor={"A": 1},
                        lost_by_sensor={"A": 3}), 1.0)
    report = h.to_json(1.1)
    a, b = report["sensors"]["A"], report["sensors"]["B"]
    assert (a["gaps"], a["lost"], b["gaps"], b["lost"]) == (1, 3, 0, 0)
    assert (report["writer"]["gaps"], report["writer"]["lost"]) == (1, 3)
    old = Health(Expected.from_settings(load_settings(_settings(tmp_path))))
    old.feed(_writer_beat(gaps=1, lost=3, rows=9), 1.0)
    assert old.to_json(1.1)["sensors"]["A"]["lost"] is None
    assert "rows 9 since writer start" in render(report)


class _ListSink(Sink):
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def stored(self) -> Iterable[StreamState]:
        return ()

    def store(self, readings: Sequence[Reading], progress: Sequence[StreamState]) -> Stored:
        self.readings += readings
        return Stored()


def _rows(first: int, n: int) -> list[Measured]:
    return [(T0 + (first + i) * S, 512, 0.0, 0.0, 0.0, 0) for i in range(n)]


def test_the_sink_core_counts_gaps_and_lost_per_sensor(tmp_path: Path) -> None:
    """A device loss on VIC and a clean ATT: lost_by_sensor {VIC: 7, ATT: 0}, gaps_by_sensor
    {VIC: 0, ATT: 0}; then a seq jump on ATT counts a gap for ATT only."""
    config = CoreConfig("writer", "inproc://unused", "inproc://unused", 1000, 1.0,
                        tmp_path / "gaps.csv", fsync=False)
    core = SinkCore(config, _ListSink())
    core.handle([encode_batch("VIC", "s1", 0, _rows(0, 5)),
                 encode_batch("VIC", "s1", 5, _rows(5, 5), dropped=7),
                 encode_batch("ATT", "s2", 0, _rows(0, 5))])
    core.recover()
    counters = core.counters()
    assert counters["lost_by_sensor"] == {"VIC": 7, "ATT": 0}
    assert counters["gaps_by_sensor"] == {"VIC": 0, "ATT": 0}
    core.handle([encode_batch("ATT", "s2", 9, _rows(9, 2))])
    assert core.counters()["gaps_by_sensor"] == {"VIC": 0, "ATT": 1}
    assert core.counters()["gaps"] == 1
