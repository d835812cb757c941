"""`powmon plot`: power and current over time from the CSV files, as a PNG.

matplotlib is an optional extra (`pip install 'powmon[plot]'`), imported only when a plot is
drawn, with the Agg backend (no display needed). The data goes through powmon.analysis.downsample
first: a few points per pixel column whatever the number of rows, peaks kept, gaps shown.
"""

from __future__ import annotations

import re
import statistics
import time
from datetime import timezone
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from powmon.analysis.datafiles import BadRows, data_files
from powmon.analysis.downsample import Series, Span, downsample, scan
from powmon.analysis.timespec import since_option, until_option
from powmon.common.options import CONTEXT_SETTINGS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI: Final = 100
LEFT, RIGHT = 0.08, 0.93  # the axes' share of the figure width (the right: amps)
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


def unit_of(sensor_id: str, span: Span) -> str:
    """W for a DC sensor; VA for an AC one (rows flagged `ac_rms`): RMS current times VCC is
    apparent power, not real power, so calling it watts would overstate a reactive load."""
    return "VA" if sensor_id in span.ac else "W"


def draw(series: dict[str, Series], span: Span, size: tuple[int, int]) -> Figure:
    """The figure: one panel per sensor, sharing the time axis (a 30 W load next to a 920 VA
    one would be a flat line on a common axis), power on the left (W, or VA for AC sensors)
    and the same readings as current on the right (A), x in UTC, 24-hour."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 -- an optional extra, loaded only to draw

        mpl.use("Agg")
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise click.ClickException(MISSING) from None
    width, height = size
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.subplots_adjust(left=LEFT, right=RIGHT, top=0.9, bottom=0.12, hspace=0.12)
    panels = fig.subplots(max(1, len(series)), 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, (sensor_id, s)) in enumerate(zip(panels, series.items(), strict=False)):
        unit = unit_of(sensor_id, span)
        ax.plot([_days(t) for t in s.ts], s.watts, color=f"C{i}", label=sensor_id, linewidth=0.8)
        ax.set_ylabel(f"{sensor_id} ({unit})")
        ax.grid(True, linewidth=0.3)
        ratio = _volts(s)
        if ratio is not None:  # the right scale is the same line read as amps
            right = ax.secondary_yaxis(
                "right", functions=(lambda w, k=ratio: w / k, lambda a, k=ratio: a * k)
            )
            right.set_ylabel("A")
    bottom = panels[-1]
    bottom.set_xlabel("time (UTC)")
    _time_axis(bottom, span, width)
    kinds = {unit_of(sid, span) for sid in series}
    what = "apparent power (VA) and power (W)" if kinds == {"W", "VA"} else (
        "apparent power (VA)" if kinds == {"VA"} else "power (W)")
    fig.suptitle(f"PowMon {what}: {_span_text(span)}")
    return fig


def _time_axis(ax: Axes, span: Span, width_px: int) -> None:
    """UTC ticks in 24-hour time, like every other PowMon tool; dense enough to read a
    13-minute plot (at least five: matplotlib's default steps jump from 5 minutes to 1), as
    many as the width has room for, and the day too when the span is longer than one."""
    from matplotlib import dates  # noqa: PLC0415 -- loaded with matplotlib, by draw()

    most = max(4, width_px // 100)  # a label needs about 100 px
    locator = dates.AutoDateLocator(tz=timezone.utc, minticks=min(5, most), maxticks=most)  # type: ignore[no-untyped-call]
    locator.intervald[dates.MINUTELY] = [1, 2, 5, 10, 15, 30]  # 2 min: 7 ticks in 13 min
    long = span.end - span.start > 86_400e9
    formatter = dates.DateFormatter("%m-%d %H:%M" if long else "%H:%M:%S", tz=timezone.utc)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter)


def _volts(s: Series) -> float | None:
    """The factor from amps to the power column (VCC), when one factor fits every point drawn
    (a change of VCC within the data would make a single right-hand scale a lie: none then)."""
    if s.ts != s.amps_ts:
        return None
    ratios = [w / a for w, a in zip(s.watts, s.amps, strict=True) if abs(a) >= 1e-3]
    if not ratios:
        return None
    k = statistics.median(ratios)
    if k <= 0 or any(abs(r - k) > 0.01 * k + 0.01 for r in ratios):
        return None
    return k


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
    """Plot power and current over time from data files or folders, one panel per sensor.

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
