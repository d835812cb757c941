"""`powmon bench` (and `python -m benchmarks`): run every figure, print the table, save JSON."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import click

from powmon.bench import (
    bus_bench,
    live_bench,
    remote_bench,
    scale_bench,
    serial_bench,
    stream_bench,
)
from powmon.bench.results import Row, save, table
from powmon.bench.runner import Plan

FIGURES: Final[dict[str, Callable[[Plan], list[Row]]]] = {
    "serial": serial_bench.run,
    "stream": stream_bench.run,
    "bus": bus_bench.run,
    "live": live_bench.run,
    "scale": scale_bench.run,
    "remote": remote_bench.run,
}


def run_all(quick: bool, only: tuple[str, ...], out: Path) -> tuple[list[Row], Path]:
    """Run the chosen figures in a scratch folder; return the rows and the JSON file."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="powmon-bench-"))
    rows: list[Row] = []
    try:
        plan = Plan.make(quick, workdir)
        for name, bench in FIGURES.items():
            if only and name not in only:
                continue
            click.echo(f"running {name} ...", err=True)
            rows.extend(bench(plan))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows.sort(key=lambda r: r.figure)  # stable: keeps each figure's own order
    return rows, save(rows, out, quick, time.monotonic() - started)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="a few-second smoke run with small sizes")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(sorted(FIGURES)),
    help="run only these benchmarks (repeatable)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("benchmarks/results"),
    show_default=True,
    help="folder for the <timestamp>.json results",
)
def bench_command(quick: bool, only: tuple[str, ...], out: Path) -> None:
    """Measure PowMon against the physical limits, each next to a reference from the same run.

    Starts real PowMon processes on free loopback ports and simulated Arduinos (Linux: uses
    pseudo-terminals and /proc). A full run takes about 8-10 minutes; --quick about 60 s.
    """
    rows, path = run_all(quick, only, out)
    click.echo(table(rows))
    missed = [r for r in rows if r.met is False]
    click.echo(f"\n{len(missed)} target(s) missed; results saved to {path}")
