"""`powmon bench` (and `python -m benchmarks`): run every figure, print the table, save JSON."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import click

from powmon.bench import (
    bus_bench,
    chaos,
    live_bench,
    remote_bench,
    rest_bench,
    scale_bench,
    serial_bench,
    stream_bench,
    uplink_bench,
)
from powmon.bench.results import Figure, save, table
from powmon.bench.runner import Plan

FIGURES: Final[dict[str, Callable[[Plan], list[Figure]]]] = {
    "serial": serial_bench.run,
    "stream": stream_bench.run,
    "bus": bus_bench.run,
    "live": live_bench.run,
    "scale": scale_bench.run,
    "remote": remote_bench.run,
    "rest": rest_bench.run,
    "uplink": uplink_bench.run,
}


def run_all(quick: bool, only: tuple[str, ...], out: Path) -> tuple[list[Figure], Path]:
    """Run the chosen figures in a scratch folder; return the rows and the JSON file."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="powmon-bench-"))
    rows: list[Figure] = []
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True)
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
@click.pass_context
def bench_command(ctx: click.Context, quick: bool, only: tuple[str, ...], out: Path) -> None:
    """Measure PowMon against the physical limits, each next to a reference from the same run.

    Starts real PowMon processes on free loopback ports and simulated Arduinos (Linux: uses
    pseudo-terminals and /proc). A full run takes about 8-10 minutes; --quick about 60 s.
    `powmon bench chaos` is the kill -9 soak instead.
    """
    if ctx.invoked_subcommand is not None:
        return
    rows, path = run_all(quick, only, out)
    click.echo(table(rows))
    missed = [r for r in rows if r.met is False]
    click.echo(f"\n{len(missed)} target(s) missed; results saved to {path}")


@bench_command.command("chaos")
@click.option("--minutes", type=click.FloatRange(min=0.2), default=10.0, show_default=True,
              help="how long to kill processes")
@click.option("--seed", type=int, default=None,
              help="the schedule's seed (printed; default: a random one)")
@click.option("--keep", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="run in this folder and keep it (default: a scratch folder, removed)")
def chaos_command(minutes: float, seed: int | None, keep: Path | None) -> None:
    """Soak `powmon run` under kill -9 and check that every reading is stored once or named.

    Four simulated sensors at 50-100 Hz and the uplink to a local receiver; every 1-4 s one
    process is killed -9 (a reader, the writer, the uplink, the broker, once `powmon run`
    itself), and the receiver goes down once. Exit 1 when the guarantee was broken; the seed
    replays the same schedule.
    """
    seed = random.randrange(1 << 32) if seed is None else seed
    click.echo(f"chaos: seed {seed}, {minutes:g} min", err=True)
    workdir = keep if keep is not None else Path(tempfile.mkdtemp(prefix="powmon-chaos-"))
    try:
        result = chaos.soak(workdir, seed, minutes * 60, say=lambda m: click.echo(m, err=True))
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    click.echo(result.summary())
    for sensor, (saved, reported) in sorted(result.energy.items()):
        click.echo(f"energy {sensor}: energy.json {saved:.6f} Wh, report {reported:.6f} Wh")
    for problem in result.problems:
        click.echo(f"PROBLEM: {problem}")
    if result.problems:
        raise SystemExit(1)
