"""`powmon plot`: power and current over time from the CSV files, as a PNG.

matplotlib is an optional extra (`pip install 'powmon[plot]'`), imported only when a plot is
drawn, with the Agg backend (no display needed). The data goes through powmon.downsample
first: a few points per pixel column whatever the number of rows, peaks kept, gaps shown.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from powmon.common.options import CONTEXT_SETTINGS
from powmon.datafiles import BadRows, data_files
from powmon.downsample import Series, Span, downsample, scan
from powmon.timespec import since_option, until_option

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI: Final = 100
LEFT, RIGHT = 0.08, 0.98  # the axes' share of the figure width
MISSING: Final = "matplotlib is not installed; plots need it: pip install 'powmon[plot]'"


def plot_columns(width_px: int) -> int:
    """Pixel columns of the plot area, one downsampling bucket each."""
    return max(1, int(width_px * (RIGHT - LEFT)))


def _span_text(span: Span) -> str:
    start, end = span.start / 1e9, span.end / 1e9
    seconds = end - start
    length = (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
        if seconds < 172800
        else f"{seconds / 86400:.1f} days"
    )
    first = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start))
    same_day = time.gmtime(start)[:3] == time.gmtime(end)[:3]
    last = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.gmtime(end))
    return f"{first} to {last} UTC ({length})"


def draw(series: dict[str, Series], span: Span, size: tuple[int, int]) -> Figure:
    """The figure: power on top, current below, one line per sensor, x in UTC."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 -- an optional extra, loaded only to draw

        mpl.use("Agg")
        from matplotlib import dates  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise click.ClickException(MISSING) from None
    width, height = size
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.subplots_adjust(left=LEFT, right=RIGHT, top=0.9, bottom=0.12, hspace=0.15)
    power, current = fig.subplots(2, 1, sharex=True)
    for sensor_id, s in series.items():
        power.plot([_days(t) for t in s.ts], s.watts, label=sensor_id, linewidth=0.8)
        current.plot([_days(t) for t in s.amps_ts], s.amps, label=sensor_id, linewidth=0.8)
    power.set_ylabel("power (W)")
    current.set_ylabel("current (A)")
    current.set_xlabel("time (UTC)")
    locator = dates.AutoDateLocator()  # type: ignore[no-untyped-call]
    current.xaxis.set_major_locator(locator)
    current.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    power.legend(loc="upper right", fontsize="small")
    for ax in (power, current):
        ax.grid(True, linewidth=0.3)
    fig.suptitle(f"PowMon: {', '.join(series)}, {_span_text(span)}")
    return fig


def _days(ts_ns: float) -> float:
    """matplotlib's date number (days since 1970-01-01 UTC); NaN stays NaN (a break)."""
    return ts_ns / 86_400e9


def build_plot(
    files: list[Path],
    sensors: tuple[str, ...],
    since: int | None,
    until: int | None,
    size: tuple[int, int],
) -> Figure:
    """Read, downsample and draw; click.ClickException when there is nothing to draw."""
    bad = BadRows()
    span = scan(files, sensors, since, until, bad)
    if span is None:
        raise click.ClickException("no readings to plot (check FILES, --sensor, --since/--until)")
    series = downsample(files, span, plot_columns(size[0]), since, until, BadRows())
    bad.report()
    return draw(series, span, size)


def _size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    """click callback: 'WIDTHxHEIGHT' in pixels, or a usage error."""
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})", value)
    if match is None or not (200 <= int(match[1]) <= 20000 and 150 <= int(match[2]) <= 20000):
        raise click.BadParameter(
            f"{value!r}: expected WIDTHxHEIGHT in pixels, like 1200x600 (at least 200x150)",
            ctx=ctx,
            param=param,
        )
    return int(match[1]), int(match[2])


@click.command("plot", context_settings=CONTEXT_SETTINGS)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("power.png"),
    show_default=True,
    help="the PNG to write",
)
@click.option("--sensor", "sensors", multiple=True, help="only this sensor id (repeatable)")
@since_option
@until_option
@click.option(
    "--size",
    metavar="WxH",
    callback=_size,
    default="1200x600",
    show_default=True,
    help="image size in pixels",
)
def plot_command(
    files: tuple[Path, ...],
    output: Path,
    sensors: tuple[str, ...],
    since: int | None,
    until: int | None,
    size: tuple[int, int],
) -> None:
    """Plot power and current over time from data files or folders, one line per sensor.

    Example: powmon plot data/ -o power.png --since -1h
    """
    paths = data_files(files)
    if not paths:
        raise click.ClickException("no data files among FILES (expected the writer's CSV files)")
    fig = build_plot(paths, sensors, since, until, size)
    try:
        fig.savefig(output, dpi=DPI, format="png")
    except OSError as err:
        raise click.ClickException(f"{output}: cannot write the plot: {err}") from None
    click.echo(f"wrote {output} ({size[0]}x{size[1]})")
