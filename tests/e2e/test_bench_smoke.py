"""`powmon bench --quick` runs end to end, so the benchmarks cannot rot unnoticed.

No timing assertions: the machine is shared. The run must produce every figure of issue 5 in
the table and in the JSON file, each with a positive number.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from powmon.bench import bench_command

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ptys and /proc: Linux"),
]

FIGURES = {"1", "2", "3", "4", "5", "6", "7", "8", "9"}


@pytest.mark.timeout(110)
def test_quick_bench_reports_every_figure_with_positive_numbers(tmp_path: Path) -> None:
    """Quick mode prints the table and saves JSON rows for every figure, every value > 0."""
    out = tmp_path / "results"
    result = CliRunner().invoke(bench_command, ["--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = list(out.glob("*-quick.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text(encoding="utf-8"))
    rows = doc["rows"]
    assert {r["figure"] for r in rows} == FIGURES
    counted = [r for r in rows if "lost" not in r["name"]]  # a loss count is 0 when all is well
    assert all(r["powmon"] > 0 for r in counted), [r for r in counted if r["powmon"] <= 0]
    assert all(r["reference"] is None or r["reference"] > 0 for r in rows)
    for row in rows:
        assert row["name"] in result.output
