"""`powmon bench --quick` runs end to end, so the benchmarks cannot rot unnoticed.

No timing assertions: the machine is shared. The benchmarks together must produce every figure
of issue 5 in the table and in the JSON file, each with a positive number. Each benchmark runs
as a test of its own (`--quick --only NAME`), so that pytest-xdist spreads the minute they take
in all over its workers; BENCHES says which figures each must produce, and together they are
every figure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Final

import pytest
from click.testing import CliRunner

from powmon.bench import bench_command
from powmon.bench.cli import FIGURES as BENCH_RUNS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ptys and /proc: Linux"),
]

FIGURES = {"1", "2", "3", "4", "5", "6", "7", "8", "9"}
BENCHES: Final = {
    "serial": {"1"},
    "stream": {"7"},
    "bus": {"2", "4"},
    "live": {"3", "4"},
    "scale": {"5"},
    "remote": {"6"},
    "rest": {"9"},
    "uplink": {"8"},
}


def test_the_benchmarks_together_give_every_figure() -> None:
    """Every benchmark `powmon bench` runs is smoke-tested below, and they cover each figure."""
    assert set(BENCHES) == set(BENCH_RUNS)
    assert set().union(*BENCHES.values()) == FIGURES


@pytest.mark.timeout(110)
@pytest.mark.parametrize("bench", sorted(BENCHES))
def test_quick_bench_reports_every_figure_with_positive_numbers(
    tmp_path: Path, bench: str
) -> None:
    """Quick mode prints the table and saves JSON rows for its figures, every value > 0."""
    out = tmp_path / "results"
    result = CliRunner().invoke(bench_command, ["--quick", "--only", bench, "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = list(out.glob("*-quick.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text(encoding="utf-8"))
    rows = doc["rows"]
    assert {r["figure"] for r in rows} == BENCHES[bench]
    counted = [r for r in rows if "lost" not in r["name"]]  # a loss count is 0 when all is well
    assert all(r["powmon"] > 0 for r in counted), [r for r in counted if r["powmon"] <= 0]
    assert all(r["reference"] is None or r["reference"] > 0 for r in rows)
    for row in rows:
        assert row["name"] in result.output
