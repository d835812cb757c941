"""`powmon report`: energy and power per sensor and period, from the CSV files, streaming.

One pass over the files in creation order: every row goes to a base.energy meter (which
integrates pairs of neighbouring readings, holds the ends of holes until replayed rows later
in the files fill them, and leaves holes beyond the bridge limit as missing coverage) and to
per-period statistics. Memory grows with the number of sensors, periods and open holes, not
with the rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from powmon.analysis.datafiles import BadRows, data_files, rows
from powmon.analysis.periods import Periods
from powmon.analysis.timespec import since_option, until_option
from powmon.base.energy import EnergyMeter
from powmon.common.options import CONTEXT_SETTINGS

_COLUMNS = (
    ("sensor", "<"),
    ("period", "<"),
    ("energy_Wh", ">"),
    ("mean_W", ">"),
    ("min_W", ">"),
    ("max_W", ">"),
    ("readings", ">"),
    ("coverage", ">"),
    ("over_range", ">"),
)


def build_report(
    files: list[Path],
    by: str | None,
    sensors: tuple[str, ...],
    since: int | None,
    until: int | None,
) -> tuple[dict[str, Any], BadRows]:
    """The report document for the data files (already in order); bad rows are counted."""
    periods = Periods(by, since, until)
    meter = EnergyMeter(on_segment=periods.segment)
    wanted = frozenset(sensors)
    bad = BadRows()
    add, reading, inside = meter.add, periods.reading, periods.inside
    for ts_ns, sensor_id, session, seq, _amps, watts, flags in rows(files, bad):
        if wanted and sensor_id not in wanted:
            continue
        add(sensor_id, session, seq, ts_ns, watts)
        if inside(ts_ns):
            reading(sensor_id, ts_ns, watts, flags)
    meter.close()
    doc = periods.result()
    doc["by"] = by
    doc["files"] = len(files)
    doc["bad_rows"] = bad.total
    return doc, bad


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "coverage":
        return f"{value * 100:.1f}%"
    if kind == "energy_wh":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _period_label(by: str | None, start: str, end: str) -> str:
    if by == "day":
        return start[:10]
    if by == "hour":
        return start[:13].replace("T", " ") + ":00"
    return f"{start[:19].replace('T', ' ')} .. {end[:19].replace('T', ' ')}"


def render_table(doc: dict[str, Any]) -> str:
    """An aligned text table: one line per sensor and period (per sensor without --by)."""
    lines: list[list[str]] = []
    for sensor_id, data in doc["sensors"].items():
        entries = (
            data["periods"] if doc["by"] else [{**data, "start": doc["since"], "end": doc["until"]}]
        )
        for p in entries:
            period = _period_label(doc["by"], p["start"], p["end"])
            lines.append(
                [
                    sensor_id,
                    period,
                    *(
                        _cell(p[k], k)
                        for k in (
                            "energy_wh",
                            "mean_w",
                            "min_w",
                            "max_w",
                            "readings",
                            "coverage",
                            "over_range",
                        )
                    ),
                ]
            )
    header = [name for name, _ in _COLUMNS]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = []
    for row in [header, *lines]:
        out.append(
            "  ".join(
                f"{cell:{align}{width}}"
                for cell, (_, align), width in zip(row, _COLUMNS, widths, strict=True)
            ).rstrip()
        )
    out.append(f"window {doc['since']} .. {doc['until']} (UTC); periods: {doc['by'] or 'all'}")
    return "\n".join(out)


@click.command("report", context_settings=CONTEXT_SETTINGS)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--by",
    type=click.Choice(["hour", "day"]),
    default=None,
    help="one line per UTC hour or day (default: one per sensor)",
)
@click.option("--sensor", "sensors", multiple=True, help="only this sensor id (repeatable)")
@since_option
@until_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
def report_command(
    files: tuple[Path, ...],
    by: str | None,
    sensors: tuple[str, ...],
    since: int | None,
    until: int | None,
    as_json: bool,
) -> None:
    """Energy (Wh), mean/min/max power, readings, coverage and over-range counts per sensor
    and period, from data files or folders (rotated files are read in creation order).

    Example: powmon report data/ --by hour --since -1d
    """
    if since is not None and until is not None and until <= since:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    paths = data_files(files)
    if not paths:
        raise click.ClickException("no data files among FILES (expected the writer's CSV files)")
    doc, bad = build_report(paths, by, sensors, since, until)
    bad.report()
    if sensors and not doc["sensors"]:
        raise click.ClickException(f"no readings of {', '.join(sensors)} in the files")
    click.echo(json.dumps(doc, indent=2) if as_json else render_table(doc))
