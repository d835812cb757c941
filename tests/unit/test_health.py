"""The health model: which process is up, how fresh each sensor is, and the pipeline verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from powmon.base.health import MAX_EXTRA, STALE_MIN_S, Expected, Health
from powmon.common.schema.readings import Reading
from powmon.common.schema.status import Status, decode_status, encode_status
from powmon.common.settings import load_settings
from tests.helpers import write_settings

S = 1_000_000_000
T0 = 1_800_000_000 * S  # the senders' wall clock, in ns


def _expected(tmp_path: Path, **overrides: Any) -> Expected:
    path = write_settings(
        tmp_path / "settings.yaml",
        [{"PORT": "sim://A", "SENSORS_ID": "A"}, {"PORT": "sim://B", "SENSORS_ID": "B"}],
        HEARTBEAT_INTERVAL=0.5, STALL_TIMEOUT=5, TIMEOUT=0.5, **overrides,
    )
    return Expected.from_settings(load_settings(path))


def beat(process: str, ident: str, at_s: float, state: str = "running", pid: int = 10,
         started_ns: int = 0, **counters: Any) -> Status:
    """A heartbeat as the bus delivers it: through the schema's encoder and decoder."""
    status = Status(process, ident, pid, T0 + int(at_s * S), state, counters, started_ns)
    return decode_status(encode_status(status))


def _reader(ident: str, at_s: float, readings: int, last_s: float | None, **more: Any) -> Status:
    last = 0 if last_s is None else T0 + int(last_s * S)
    return beat("reader", ident, at_s, session="s1", readings=readings, last_reading_ns=last,
                bad_lines=1, reconnects=2, connected=True, **more)


def _all_up(h: Health, now: float) -> None:
    for name in ("broker", "writer"):
        h.feed(beat(name, name, now), now)
    for sensor in ("A", "B"):
        h.feed(_reader(sensor, now - 1, 100, now - 1.1), now - 1)
        h.feed(_reader(sensor, now, 110, now - 0.1), now)


def test_expected_processes_follow_the_settings(tmp_path: Path) -> None:
    """Broker, writer, one reader per sensor; the uplink only with REMOTE_SAVE; the web page
    (not required) only with WEB_LISTEN."""
    plain = _expected(tmp_path)
    assert [(p, i) for p, i, _ in plain.processes] == [
        ("broker", "broker"), ("writer", "writer"), ("reader", "A"), ("reader", "B")]
    full = _expected(tmp_path, REMOTE_SAVE=True, UPLINK_URL="http://127.0.0.1:9/x",
                     WEB_LISTEN="127.0.0.1:8080")
    assert ("uplink", "uplink", True) in full.processes
    assert ("web", "web", False) in full.processes


def test_everything_up_and_fresh_is_ok(tmp_path: Path) -> None:
    """All heartbeats recent and every sensor read within STALL_TIMEOUT: ok, no problems;
    the rate comes from two heartbeats' `readings` counters."""
    h = Health(_expected(tmp_path))
    _all_up(h, 100.0)
    report = h.to_json(100.2)
    assert report["ok"], report["problems"]
    a = report["sensors"]["A"]
    assert a["rate"] == pytest.approx(10.0)
    assert a["age_s"] == pytest.approx(0.3)
    assert (a["bad_lines"], a["reconnects"], a["session"]) == (1, 2, "s1")
    assert report["processes"]["reader/A"]["pid"] == 10


def test_nothing_heard_is_down(tmp_path: Path) -> None:
    """No heartbeat at all (nothing running): every required process down, not ok."""
    report = Health(_expected(tmp_path)).to_json(50.0)
    assert not report["ok"]
    assert all(not p["up"] for p in report["processes"].values())
    assert "writer down: no heartbeat seen" in report["problems"]


def test_a_silent_process_goes_down_after_a_few_intervals(tmp_path: Path) -> None:
    """The writer's last beat older than the stale limit: down, named in the problems."""
    h = Health(_expected(tmp_path))
    _all_up(h, 100.0)
    for name in ("broker",):
        h.feed(beat(name, name, 100 + STALE_MIN_S), 100 + STALE_MIN_S)
    for sensor in ("A", "B"):
        h.feed(_reader(sensor, 102, 130, 102), 100 + STALE_MIN_S)
    report = h.to_json(100 + STALE_MIN_S + 0.1)
    assert not report["processes"]["writer"]["up"]
    assert report["processes"]["broker"]["up"]
    assert [p for p in report["problems"] if p.startswith("writer down: no heartbeat for")]


@pytest.mark.parametrize("state", ["stopped", "stopping"])
def test_a_process_that_said_it_stops_is_down_at_once(tmp_path: Path, state: str) -> None:
    """A last heartbeat with state stopped/stopping means down, however recent it is."""
    h = Health(_expected(tmp_path))
    _all_up(h, 100.0)
    h.feed(beat("writer", "writer", 100.1, state=state), 100.1)
    report = h.to_json(100.2)
    assert report["processes"]["writer"]["why_down"] == f"state {state}"
    assert not report["ok"]


def test_a_sensor_without_readings_for_stall_timeout_is_stale(tmp_path: Path) -> None:
    """A reader alive but whose last reading is older than STALL_TIMEOUT: not ok; a reader
    that never read anything: 'no reading yet'."""
    h = Health(_expected(tmp_path))
    _all_up(h, 100.0)
    h.feed(_reader("A", 100.1, 110, 94.0), 100.1)
    h.feed(_reader("B", 100.1, 0, None), 100.1)
    report = h.to_json(100.2)
    assert not report["sensors"]["A"]["fresh"]
    assert report["problems"] == [
        "sensor A: no reading for 6.2s (STALL_TIMEOUT 5s)", "sensor B: no reading yet"]


def test_ages_are_measured_on_the_senders_clock(tmp_path: Path) -> None:
    """A reader whose clock is an hour ahead of ours still shows a fresh last reading: the age
    is its heartbeat time minus its reading time, plus our time since the heartbeat came."""
    h = Health(_expected(tmp_path))
    _all_up(h, 100.0)
    h.feed(_reader("A", 3700.0, 120, 3699.5), 100.0)
    assert h.to_json(101.0)["sensors"]["A"]["age_s"] == pytest.approx(1.5)


def test_a_restarted_reader_starts_its_rate_over(tmp_path: Path) -> None:
    """A new pid or session resets the rate window (its counter starts again at 0), so the
    rate is never negative."""
    h = Health(_expected(tmp_path))
    _all_up(h, 100.0)
    h.feed(beat("reader", "A", 100.5, pid=11, session="s2", readings=3,
                last_reading_ns=T0 + int(100.4 * S)), 100.5)
    assert h.to_json(100.6)["sensors"]["A"]["rate"] is None
    h.feed(beat("reader", "A", 101.5, pid=11, session="s2", readings=13,
                last_reading_ns=T0 + int(101.4 * S)), 101.5)
    assert h.to_json(101.6)["sensors"]["A"]["rate"] == pytest.approx(10.0)


def test_uptime_from_started_ns_or_a_lower_bound(tmp_path: Path) -> None:
    """With a `started_ns` in the heartbeat the uptime is exact; without it, the time since
    this pid was first heard of, marked as a lower bound."""
    h = Health(_expected(tmp_path))
    h.feed(beat("broker", "broker", 100.0, started_ns=T0 + 40 * S), 100.0)
    h.feed(beat("writer", "writer", 100.0), 90.0)
    procs = h.to_json(101.0)["processes"]
    assert procs["broker"]["uptime_s"] == pytest.approx(61.0)
    assert procs["broker"]["uptime_exact"]
    assert procs["writer"]["uptime_s"] == pytest.approx(11.0)
    assert not procs["writer"]["uptime_exact"]


def test_writer_uplink_supervisor_and_per_sensor_counters(tmp_path: Path) -> None:
    """Writer file and totals, uplink spool and last success, restarts from the supervisor;
    gaps, lost and energy per sensor when the writer publishes them as {sensor: n} maps."""
    h = Health(_expected(tmp_path, REMOTE_SAVE=True, UPLINK_URL="http://127.0.0.1:9/x"))
    _all_up(h, 100.0)
    h.feed(beat("writer", "writer", 100.0, current_file="data-000002-x.csv",
                bytes_in_file=1234, rows=50, gaps={"A": 2, "B": 1}, lost={"A": 5},
                energy_wh={"A": 1.5}), 100.0)
    h.feed(beat("uplink", "uplink", 100.0, spool_depth=7,
                last_success_ns=T0 + 97 * S, last_error="HTTP 503"), 100.0)
    h.feed(beat("supervisor", "run", 100.0, restarts={"reader A": 3, "writer": 1}), 100.0)
    report = h.to_json(100.5)
    assert report["writer"] == {
        "current_file": "data-000002-x.csv", "bytes_in_file": 1234, "rows": 50, "gaps": 3,
        "missing": None, "lost": 5, "bad_messages": None, "dropped": None}
    up = report["uplink"]
    assert (up["spool_depth"], up["last_error"]) == (7, "HTTP 503")
    assert up["last_success_age_s"] == pytest.approx(3.5)
    a, b = report["sensors"]["A"], report["sensors"]["B"]
    assert (a["gaps"], a["lost"], a["energy_wh"]) == (2, 5, 1.5)
    assert (b["gaps"], b["lost"], b["energy_wh"]) == (1, None, None)
    assert report["processes"]["reader/A"]["restarts"] == 3
    assert report["processes"]["writer"]["restarts"] == 1
    assert not report["processes"]["supervisor/run"]["required"]


def test_readings_give_the_last_amps_and_watts(tmp_path: Path) -> None:
    """Fed readings (the web process does), a sensor shows its latest amps and watts."""
    h = Health(_expected(tmp_path))
    h.feed_reading(Reading("A", "s1", 0, T0, 600, 0.43, 6.5, 32.5))
    h.feed_reading(Reading("A", "s1", 1, T0 + S, 601, 0.44, 6.6, 33.0))
    a = h.to_json(1.0)["sensors"]["A"]
    assert (a["amps"], a["watts"], a["reading_ts_ns"]) == (6.6, 33.0, T0 + S)


def test_unknown_processes_on_the_bus_are_shown_but_bounded(tmp_path: Path) -> None:
    """Heartbeats of processes the settings do not name are shown (not required) up to a
    bound, so junk on the bus cannot grow the model."""
    h = Health(_expected(tmp_path))
    for n in range(MAX_EXTRA + 10):
        h.feed(beat("reader", f"X{n}", 100.0), 100.0)
    procs = h.to_json(100.0)["processes"]
    assert len(procs) == 4 + MAX_EXTRA
    assert not procs["reader/X0"]["required"]
