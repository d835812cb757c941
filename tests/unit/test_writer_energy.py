"""The writer's energy totals: counted from what it stores, saved beside the data, continued
after a restart (even one that lost the last save), and only ever growing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from powmon.analysis.datafiles import data_files
from powmon.analysis.report import build_report
from powmon.base.energy import EnergyMeter
from powmon.common.schema.readings import Reading, encode_reading
from powmon.writer.energy import ENERGY_FILE
from powmon.writer.writer import WriterConfig
from tests.writers import Writer, make_writer

T0 = 1_795_628_536 * 10**9
STEP = 10**8  # 0.1 s


def config(root: Path) -> WriterConfig:
    return WriterConfig(
        data_root=root, data_file="data.csv", file_size_limit=10_000_000, flush_interval=0.1,
        sync_write=False, backend="tcp://127.0.0.1:1", frontend="tcp://127.0.0.1:2", hwm=1000,
        heartbeat_interval=1.0, energy_periods={"VIC": 0.1}, energy_save_interval=0.0,
    )


def msgs(seqs: range, watts: float = 36.0) -> list[list[bytes]]:
    return [encode_reading(Reading("VIC", "s1", q, T0 + q * STEP, 512, 0.0, 3.0, watts))
            for q in seqs]


def energy(w: Writer) -> float:
    value = w.core.counters()["energy_wh"]
    assert isinstance(value, dict)
    return float(value["VIC"])


def start(root: Path) -> Writer:
    w = make_writer(config(root))
    w.core.resume()
    return w


def test_stored_rows_count_and_the_total_survives_a_restart(tmp_path: Path) -> None:
    """36 W for 10 s is 0.1 Wh; a restarted writer continues from it and adds the rest."""
    w = start(tmp_path)
    w.core.handle(msgs(range(101)))
    assert w.csv.flush(1.0)
    assert energy(w) == pytest.approx(0.1)
    w.csv.close()
    again = start(tmp_path)
    assert energy(again) == pytest.approx(0.1)
    again.core.handle(msgs(range(101, 201)))
    assert again.csv.flush(2.0)
    assert energy(again) == pytest.approx(0.2)
    again.csv.close()


def test_rows_stored_after_the_last_save_are_counted_from_the_files(tmp_path: Path) -> None:
    """A writer killed between a flush and the save: the saved state lags the CSV; the next
    start counts the missing rows from the files' tail, and counts nothing twice."""
    w = start(tmp_path)
    w.core.handle(msgs(range(51)))
    assert w.csv.flush(1.0)
    saved = (tmp_path / ENERGY_FILE).read_text(encoding="utf-8")
    w.core.handle(msgs(range(51, 101)))
    assert w.csv.flush(2.0)
    w.csv.files.close()  # no close(): as if killed before the last save
    (tmp_path / ENERGY_FILE).write_text(saved, encoding="utf-8")
    again = start(tmp_path)
    assert energy(again) == pytest.approx(0.1)
    again.csv.close()


def test_a_bad_state_file_is_named_and_counting_starts_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged energy.json stops nothing: an ERROR names it, the tail is counted anew."""
    (tmp_path / ENERGY_FILE).write_text(json.dumps({"version": 99}), encoding="utf-8")
    w = start(tmp_path)
    assert any(ENERGY_FILE in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    w.core.handle(msgs(range(11)))
    assert w.csv.flush(1.0)
    assert energy(w) == pytest.approx(0.01)
    w.csv.close()


def test_a_lost_range_is_not_bridged_when_it_is_too_long(tmp_path: Path) -> None:
    """0..10 and 61..71, and 11..60 never come (named lost, no_endpoint): 5 s without data,
    past the bridge limit, so only the two 1 s stretches count."""
    clock = [100.0]
    w = make_writer(config(tmp_path), clock=lambda: clock[0])
    w.core.resume()
    w.core.handle(msgs(range(11)) + msgs(range(61, 72)))
    w.core.recover()
    clock[0] += 10  # past the grace for a replay endpoint
    w.core.recover()
    assert w.core.counters()["lost"] == 50
    assert w.csv.flush(clock[0])
    assert energy(w) == pytest.approx(0.02)
    w.csv.close()


RUN_APART_NS = 12 * 60 * 10**9  # five runs in the operator's first hour


def run_msgs(sensor: str, session: str, start_ns: int, seqs: range) -> list[list[bytes]]:
    return [encode_reading(Reading(sensor, session, q, start_ns + q * STEP, 512, 0.0, 3.0, 36.0))
            for q in seqs]


def two_sensor_config(root: Path) -> WriterConfig:
    return dataclasses.replace(config(root), energy_periods={"VIC": 0.1, "ATT": 0.1})


def test_five_runs_leave_only_live_sessions_and_the_totals_of_all(tmp_path: Path) -> None:
    """Two sensors, five writer and reader runs 12 minutes apart: each restart resumes only
    the current session of each sensor (plus one whose hole is still open) instead of 2, 4,
    6, 8, 10 streams, energy.json keeps as few sessions, and its totals stay exactly what
    `powmon report` counts from the same files."""
    kept_streams = []
    for run in range(5):
        w = make_writer(two_sensor_config(tmp_path))
        w.core.resume()
        kept_streams.append(w.core.tracker.streams)
        begin = T0 + run * RUN_APART_NS
        batch = run_msgs("ATT", f"att{run}", begin, range(100))
        seqs = range(100) if run != 2 else [*range(50), *range(60, 100)]  # run 2: a hole
        batch += [m for q in seqs for m in run_msgs("VIC", f"vic{run}", begin, range(q, q + 1))]
        w.core.handle(batch)
        assert w.csv.flush(float(run))
        w.csv.close()
        state = json.loads((tmp_path / ENERGY_FILE).read_text(encoding="utf-8"))
        sessions = {sid: sorted(s["streams"]) for sid, s in state["sensors"].items()}
        assert sessions["ATT"] == [f"att{run}"]
        assert sessions["VIC"] == sorted({f"vic{run}", *(["vic2"] if run >= 2 else [])})
    # run 3 resumes vic2 as VIC's current session, runs 4 and 5 for its hole (never filled
    # nor given up here: no reader answers)
    assert kept_streams == [0, 2, 2, 2, 3]
    again = make_writer(two_sensor_config(tmp_path))
    again.core.resume()
    assert again.core.tracker.knows("VIC", "vic2") and again.core.tracker.knows("VIC", "vic4")
    assert not again.core.tracker.knows("VIC", "vic3")
    again.csv.files.close()
    doc, _ = build_report(data_files([tmp_path]), None, (), None, None)
    for sensor in ("VIC", "ATT"):
        saved = state["sensors"][sensor]
        assert saved["energy_wh"] == pytest.approx(doc["sensors"][sensor]["energy_wh"], rel=1e-9)
        assert saved["readings"] == doc["sensors"][sensor]["readings"]
    assert state["sensors"]["ATT"]["energy_wh"] == pytest.approx(5 * 36 * 9.9 / 3600)


def test_a_folded_session_is_not_counted_again_from_the_tail(tmp_path: Path) -> None:
    """A restart reads its files' tail again: rows of sessions folded into the totals are
    recognised, so a folded session adds nothing a second time."""
    w = make_writer(two_sensor_config(tmp_path))
    w.core.resume()
    w.core.handle(run_msgs("VIC", "old", T0, range(101)))
    w.core.handle(run_msgs("VIC", "new", T0 + RUN_APART_NS, range(101)))
    assert w.csv.flush(1.0)
    w.csv.close()
    state = json.loads((tmp_path / ENERGY_FILE).read_text(encoding="utf-8"))
    assert list(state["sensors"]["VIC"]["streams"]) == ["new"]
    again = make_writer(two_sensor_config(tmp_path))
    again.core.resume()
    assert energy(again) == pytest.approx(0.2)
    again.csv.close()


def test_fold_keeps_the_totals_and_the_sessions_with_holes() -> None:
    """EnergyMeter.fold: the current session and those named open stay, the rest go; the
    totals do not move, and a straggler of a folded session is not counted."""
    meter = EnergyMeter({"VIC": 0.1})
    for i, session in enumerate(("a", "b", "c")):
        for q in (*range(10), *range(16, 20)):  # a hole past the bridge limit
            meter.add("VIC", session, q, T0 + i * RUN_APART_NS + q * STEP, 36.0)
    before = meter.totals("VIC")
    assert meter.fold({("VIC", "a")}) == 1  # b ended and has no hole named open
    state = meter.to_state()
    assert sorted(state["sensors"]["VIC"]["streams"]) == ["a", "c"]
    after = meter.totals("VIC")
    assert (after.energy_wh, after.readings) == (before.energy_wh, before.readings)
    meter.add("VIC", "b", 10, T0 + RUN_APART_NS + 10 * STEP, 36.0)
    assert meter.totals("VIC").readings == before.readings
