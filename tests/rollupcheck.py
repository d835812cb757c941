"""The rollups held against a recomputation from the raw rows, for the unit and e2e tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from powmon.base.rollups import Rollup, read_rollups
from powmon.base.storage import FileNaming, StoredRow, data_rows, list_files, open_text, parse_row
from powmon.writer.minutes import recompute


def raw_rollups(root: Path, periods: Mapping[str, float]) -> dict[tuple[str, int], Rollup]:
    """Every minute of the raw data files, recomputed from their rows."""
    rows: list[StoredRow] = []
    for _, path in list_files(root, FileNaming.from_data_file("data.csv")):
        with open_text(path) as text:
            rows.extend(parse_row(fields) for fields in data_rows(text))
    return {k: m.row(*k) for k, m in recompute(rows, periods).items()}


def assert_rollups_equal_raw(root: Path, periods: Mapping[str, float]) -> list[Rollup]:
    """The stored rollups (last row of a minute winning) are exactly the raw data's minutes:
    counts and min/max exact, means and energy within the raw files' rounding (their watts
    have 3 decimals, the writer's readings all of theirs); the energy sums to energy.json's."""
    expected = raw_rollups(root, periods)
    stored = read_rollups(root, None, 0, 1 << 62)
    got = {(r.sensor_id, r.minute_ns): r for r in stored}
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        have = got[key]
        assert (have.readings, have.over_range) == (want.readings, want.over_range), key
        assert f"{have.min_w:.3f}/{have.max_w:.3f}" == f"{want.min_w:.3f}/{want.max_w:.3f}", key
        assert have.mean_w == pytest.approx(want.mean_w, abs=1e-3), key
        assert have.mean_a == pytest.approx(want.mean_a, abs=1e-4), key
        assert have.energy_wh == pytest.approx(want.energy_wh, rel=1e-4, abs=1e-6), key
        assert have.returned_wh == pytest.approx(want.returned_wh, rel=1e-4, abs=1e-6), key
        assert have.covered_s == pytest.approx(want.covered_s, abs=1e-6), key
    totals = json.loads((root / "energy.json").read_text(encoding="utf-8"))["sensors"]
    for sensor, fields in totals.items():
        summed = sum(r.energy_wh for r in stored if r.sensor_id == sensor)
        assert summed == pytest.approx(fields["energy_wh"], rel=1e-9, abs=1e-6), sensor
    return stored
