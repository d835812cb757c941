"""The writer's per-minute rollups: what it stores, minute by minute, equal to a recomputation
from the raw rows, rebuilt when a late reading fills a minute, read back last row winning,
and deleted after ROLLUP_KEEP_DAYS."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest

from powmon.base import rollups as fmt
from powmon.base.energy import EnergyMeter
from powmon.base.rollups import DAY_NS, MINUTE_NS, Rollup
from powmon.common.schema.readings import Flag, Measured, Reading, encode_batch
from powmon.writer.rollups import Rollups
from powmon.writer.writer import WriterConfig
from tests.rollupcheck import assert_rollups_equal_raw
from tests.writers import Writer, make_writer

T0 = 1_795_628_536 * 10**9  # not on a minute's start
STEP = 10**8  # 0.1 s: 600 readings a minute
PERIODS = {"VIC": 0.1, "ATT": 0.1}


def config(root: Path) -> WriterConfig:
    return WriterConfig(
        data_root=root, data_file="data.csv", file_size_limit=200_000, flush_interval=0.1,
        sync_write=False, backend="tcp://127.0.0.1:1", frontend="tcp://127.0.0.1:2", hwm=1000,
        heartbeat_interval=1.0, energy_periods=PERIODS, energy_save_interval=0.0,
    )


def watts(seq: int) -> float:
    """A load that varies, goes negative now and then (returned energy), and is sometimes
    over range."""
    return 40.0 * math.sin(seq / 37.0) + 25.0 + (seq % 7) * 0.37


def batch(sensor: str, seqs: range, session: str = "s1", flags: int = 0) -> list[bytes]:
    rows: list[Measured] = [
        (T0 + q * STEP + (3_000_000 if sensor == "ATT" else 0), 512.0, 2.5, watts(q) / 12,
         watts(q), flags | (int(Flag.OVER_RANGE) if q % 97 == 0 else 0))
        for q in seqs
    ]
    return encode_batch(sensor, session, seqs.start, rows)


def start(root: Path, cfg: WriterConfig | None = None) -> Writer:
    w = make_writer(cfg or config(root))
    w.core.resume()
    return w


def feed(w: Writer, seqs: range, *, per: int = 10, sensors: tuple[str, ...] = ("VIC", "ATT"),
         flags: int = 0) -> None:
    """Batches of `per` readings of each sensor in turn, as readers publish them."""
    for lo in range(seqs.start, seqs.stop, per):
        w.core.handle([batch(s, range(lo, min(lo + per, seqs.stop)), flags=flags)
                       for s in sensors])


def test_rollups_equal_a_recomputation_from_the_raw_rows(tmp_path: Path) -> None:
    """Four and a half minutes of two sensors, across rotations: every minute of the rollups
    equals the raw rows' (energy within rounding of energy.json's)."""
    w = start(tmp_path)
    for lo in range(0, 2700, 300):
        feed(w, range(lo, lo + 300))
        assert w.csv.flush(float(lo))
    assert w.csv.files.files_opened > 1
    written_live = w.csv.rollups.rows_written
    assert written_live > 0  # complete minutes are written before the stop
    w.csv.close()
    stored = assert_rollups_equal_raw(tmp_path, PERIODS)
    assert {r.sensor_id for r in stored} == {"VIC", "ATT"}
    assert any(r.returned_wh > 0 for r in stored) and any(r.over_range for r in stored)
    end = T0 + 2700 * STEP
    inner = [r for r in stored if r.minute_ns > T0 and r.minute_ns + MINUTE_NS < end]
    assert inner and all(r.readings == 600 for r in inner)
    assert all(abs(r.covered_s - 60.0) < 1e-6 for r in inner)


def test_a_minute_filled_late_by_replayed_readings_is_rebuilt(tmp_path: Path) -> None:
    """A hole in minute 1 is stored and rolled up without its readings; the replayed readings
    come two minutes later: the minute is written again, and read back whole."""
    w = start(tmp_path)
    hole = range(900, 1000)
    feed(w, range(0, hole.start), sensors=("VIC",))
    feed(w, range(hole.stop, 2400), sensors=("VIC",))
    assert w.csv.flush(1.0)
    minute = (T0 + 950 * STEP) - (T0 + 950 * STEP) % MINUTE_NS
    before = {r.minute_ns: r for r in fmt.read_rollups(tmp_path, ["VIC"], 0, 1 << 62)}
    assert before[minute].readings == 600 - len(hole)
    feed(w, hole, sensors=("VIC",), flags=int(Flag.REPLAYED))
    assert w.csv.flush(2.0)
    after = {r.minute_ns: r for r in fmt.read_rollups(tmp_path, ["VIC"], 0, 1 << 62)}
    assert after[minute].readings == 600
    assert after[minute].energy_wh > before[minute].energy_wh
    w.csv.close()
    assert_rollups_equal_raw(tmp_path, {"VIC": 0.1})


def test_a_restart_after_a_kill_recomputes_what_the_rollups_lack(tmp_path: Path) -> None:
    """Killed (no close: the minutes in memory are lost, the newest rollup row removed as if
    never written), the next start recomputes them from the raw tail."""
    w = start(tmp_path)
    feed(w, range(0, 2000))
    assert w.csv.flush(1.0)
    w.csv.energy.save()
    w.csv.files.close()  # as if killed: no last flush of the rollups
    day = fmt.rollup_dir(tmp_path) / fmt.day_name(T0)
    lines = day.read_text(encoding="utf-8").splitlines(keepends=True)
    # the newest minute's rows, the first of them torn: what the restart writes first
    torn = fmt.parse_rollup(lines[-2].rstrip("\n").split(","))
    assert torn.minute_ns == fmt.parse_rollup(lines[-1].rstrip("\n").split(",")).minute_ns
    day.write_text("".join(lines[:-2]) + lines[-2][:20], encoding="utf-8")
    again = start(tmp_path)
    assert (torn.minute_ns, torn.sensor_id) in {
        (r.minute_ns, r.sensor_id) for r in fmt.read_rollups(tmp_path, None, 0, 1 << 62)}
    feed(again, range(2000, 2600))
    again.csv.close()
    assert_rollups_equal_raw(tmp_path, PERIODS)


def test_a_minute_written_again_reads_as_its_last_row_and_compacts(tmp_path: Path) -> None:
    folder = fmt.rollup_dir(tmp_path)
    folder.mkdir()
    m0 = T0 - T0 % MINUTE_NS

    def row(minute: int, sensor: str, n: int) -> Rollup:
        return Rollup(minute, sensor, n, 1.5, 1.0, 2.0, 0.125, 0.025, 0.0, 60.0, 0)

    rows = [row(m0 + MINUTE_NS, "VIC", 1), row(m0, "VIC", 2), row(m0, "ATT", 3),
            row(m0, "VIC", 4), row(m0 + MINUTE_NS, "VIC", 5)]
    path = folder / fmt.day_name(m0)
    path.write_text(fmt.header_line() + "".join(map(fmt.format_rollup, rows)) + "2026-", "utf-8")
    got = fmt.read_rollups(tmp_path, None, m0, m0 + 2 * MINUTE_NS)
    assert [(r.minute_ns, r.sensor_id, r.readings) for r in got] == [
        (m0, "ATT", 3), (m0, "VIC", 4), (m0 + MINUTE_NS, "VIC", 5)]
    assert [r.readings for r in fmt.read_rollups(tmp_path, ["VIC"], m0 + 1, m0 + DAY_NS)] == [5]
    assert fmt.parse_rollup(fmt.format_rollup(got[0]).rstrip("\n").split(",")) == got[0]
    assert fmt.compact(path) == 3
    text = path.read_text(encoding="utf-8")
    assert text == fmt.header_line() + "".join(map(fmt.format_rollup, got))
    assert fmt.read_rollups(tmp_path, None, 0, 1 << 62) == got


def test_rollup_files_older_than_rollup_keep_days_are_deleted(tmp_path: Path) -> None:
    """Whole days older than ROLLUP_KEEP_DAYS go, at start and hourly; the rest stay."""
    folder = fmt.rollup_dir(tmp_path)
    folder.mkdir()
    now = time.time()
    today = int(now * 1e9)
    for days_ago in (0, 1, 2, 5, 30):
        (folder / fmt.day_name(today - days_ago * DAY_NS)).write_text(fmt.header_line(), "utf-8")
    cfg = dataclasses.replace(config(tmp_path), rollup_keep_days=3.0)
    w = start(tmp_path, cfg)
    feed(w, range(0, 20), sensors=("VIC",))
    assert w.csv.flush(1.0)
    kept = {p.name for _, p in fmt.list_days(folder)} - {fmt.day_name(T0)}
    assert kept == {fmt.day_name(today - d * DAY_NS) for d in (0, 1, 2)}
    assert w.csv.counters()["rollup_files_deleted"] == 2
    w.csv.close()
    Rollups(tmp_path, {}, None, fsync=False).retention(now + 1000 * 86400)  # None: forever
    assert len(fmt.list_days(folder)) == 4


def test_energy_told_per_minute_sums_to_the_meters_totals() -> None:
    """EnergyMeter.split_by: in its one-pass runs, its reading-by-reading path and a hole
    filled late alike, the minutes' parts add up to the meter's own totals."""
    parts: dict[int, list[float]] = {}

    def told(sensor_id: str, start: int, consumed: float, returned: float, s: float) -> None:
        assert sensor_id == "VIC" and start % MINUTE_NS == 0
        got = parts.setdefault(start, [0.0, 0.0, 0.0])
        got[0] += consumed
        got[1] += returned
        got[2] += s

    meter = EnergyMeter({"VIC": 0.1})
    meter.split_by(MINUTE_NS, told)
    late = range(700, 720)
    seqs = [q for q in range(2000) if q not in late]
    run = [Reading("VIC", "s1", q, T0 + q * STEP, 0.0, 0.0, 0.0, watts(q)) for q in seqs]
    for lo in range(0, len(run), 25):
        meter.add_run("VIC", "s1", run[lo:lo + 25])
    for q in late:
        meter.add("VIC", "s1", q, T0 + q * STEP, watts(q))
    totals = meter.totals("VIC")
    assert len(parts) == 4
    assert sum(p[0] for p in parts.values()) == pytest.approx(totals.energy_wh, rel=1e-12)
    assert sum(p[1] for p in parts.values()) == pytest.approx(totals.returned_wh, rel=1e-12)
    assert sum(p[2] for p in parts.values()) == pytest.approx(totals.covered_s, rel=1e-12)
    assert totals.returned_wh > 0 and totals.covered_s == pytest.approx(199.9)
