"""The writer's energy totals: counted from what it stores, saved beside the data, continued
after a restart (even one that lost the last save), and only ever growing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from powmon.common.schema import Reading, encode_reading
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
