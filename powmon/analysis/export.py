"""`powmon export`: the readings of many data files as one time-ordered file, for pandas,
Grafana and spreadsheets.

The files of every session and rotation are read (plain or compressed, base.storage), kept to
--since/--until/--sensor, put in time order with each reading once (powmon.analysis.timeorder:
an external sort, so memory stays bounded for a year of data), and written as csv (the data
files' own columns and row format, base.storage.csv_lines), jsonl (one object per line, the
uplink's json fields, base.text.reading_dict) or parquet (a typed table; pyarrow is an extra,
`pip install 'powmon[parquet]'`, imported only for it). A file named by -o is written beside
itself and renamed when whole, so a failed export leaves no half file.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final

import click

from powmon.analysis.datafiles import BadRows, data_files, readings
from powmon.analysis.timeorder import time_ordered
from powmon.analysis.timespec import since_option, until_option
from powmon.base.storage import csv_lines, header_line
from powmon.base.text import flag_names, reading_dict
from powmon.common.options import CONTEXT_SETTINGS
from powmon.common.schema.readings import Reading

FORMATS: Final = ("csv", "jsonl", "parquet")
BATCH_ROWS: Final = 65_536  # readings formatted at once; a parquet row group each
MISSING_PYARROW: Final = "parquet needs pyarrow: pip install 'powmon[parquet]'"


def selected(
    files: list[Path], sensors: tuple[str, ...], since: int | None, until: int | None,
    bad: BadRows,
) -> Iterator[Reading]:
    """The files' readings of the sensors (all without any) in [since, until), file order."""
    wanted = frozenset(sensors)
    for r in readings(files, bad):
        if ((not wanted or r.sensor_id in wanted) and (since is None or r.ts_ns >= since)
                and (until is None or r.ts_ns < until)):
            yield r


def write_csv(out: IO[str], batches: Iterable[list[Reading]]) -> None:
    out.write(header_line())
    for batch in batches:
        out.writelines(csv_lines(batch))


def write_jsonl(out: IO[str], batches: Iterable[list[Reading]]) -> None:
    """One JSON object per line, as the uplink's json and MQTT bodies write a reading."""
    for batch in batches:
        out.writelines(
            json.dumps(reading_dict(r), ensure_ascii=False, allow_nan=False,
                       separators=(",", ":")) + "\n"
            for r in batch
        )


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, or a one-line error naming the extra."""
    try:
        import pyarrow as pa  # noqa: PLC0415 -- an optional extra, loaded only for parquet
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError:
        raise click.ClickException(MISSING_PYARROW) from None
    return pa, pq


def write_parquet(path: Path, batches: Iterable[list[Reading]]) -> None:
    """A parquet table of the data columns, typed: timestamp as UTC timestamp[us] (the
    precision the data files keep), seq int64, raw/volts/amps/watts float64, ids and flags
    strings (dictionary encoded by the writer, as they repeat)."""
    pa, pq = _pyarrow()
    schema = pa.schema([
        ("timestamp", pa.timestamp("us", tz="UTC")), ("sensor_id", pa.string()),
        ("session", pa.string()), ("seq", pa.int64()), ("raw", pa.float64()),
        ("volts", pa.float64()), ("amps", pa.float64()), ("watts", pa.float64()),
        ("flags", pa.string()),
    ])
    with pq.ParquetWriter(path, schema) as out:
        for batch in batches:
            columns = [
                [r.ts_ns // 1000 for r in batch], [r.sensor_id for r in batch],
                [r.session for r in batch], [r.seq for r in batch],
                [float(r.raw) for r in batch], [r.volts for r in batch],
                [r.amps for r in batch], [r.watts for r in batch],
                [flag_names(r.flags) for r in batch],
            ]
            out.write_table(pa.Table.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
                schema=schema))


def _batched(rows: Iterator[Reading], first: Reading) -> Iterator[list[Reading]]:
    rows = itertools.chain((first,), rows)
    while batch := list(itertools.islice(rows, BATCH_ROWS)):
        yield batch


def export(rows: Iterator[Reading], fmt: str, output: Path | None) -> int:
    """Write the rows (in order) to `output` (None: stdout); the count of readings written.

    Nothing is written, and 0 returned, when there are none (not even a header)."""
    counted = _Counted(rows)
    first = next(counted, None)
    if first is None:
        return 0
    batches = _batched(counted, first)
    if output is None:
        (write_csv if fmt == "csv" else write_jsonl)(sys.stdout, batches)
        sys.stdout.flush()
        return counted.count
    # created here (mode "x": new, with the umask's permissions, as the output will have)
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        if fmt == "parquet":
            write_parquet(partial, batches)
        else:
            with partial.open("x", encoding="utf-8", newline="") as out:
                (write_csv if fmt == "csv" else write_jsonl)(out, batches)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return counted.count


class _Counted(Iterator[Reading]):
    """The rows, counting those taken."""

    def __init__(self, rows: Iterator[Reading]) -> None:
        self.rows, self.count = rows, 0

    def __next__(self) -> Reading:
        r = next(self.rows)
        self.count += 1
        return r


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail again
    on the closed pipe (the recipe of Python's signal module docs)."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _check(fmt: str, output: Path | None, since: int | None, until: int | None) -> None:
    """Usage errors (exit 2), each naming its option, before any file is read."""
    if since is not None and until is not None and until <= since:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    if fmt == "parquet":
        if output is None:
            raise click.BadParameter("parquet is written to a file: add -o FILE",
                                     param_hint="--output")
        _pyarrow()
    if output is not None and not output.parent.is_dir():
        raise click.BadParameter(f"{output.parent}: no such folder", param_hint="--output")


@click.command("export", context_settings=CONTEXT_SETTINGS)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--sensor", "sensors", multiple=True, help="only this sensor id (repeatable)")
@since_option
@until_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True,
              help="csv: the data files' columns; jsonl: one JSON object per line; parquet: "
              "a typed table (pip install 'powmon[parquet]')")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              default=None, help="the file to write (default: stdout; parquet needs a file)")
def export_command(
    files: tuple[Path, ...],
    sensors: tuple[str, ...],
    since: int | None,
    until: int | None,
    fmt: str,
    output: Path | None,
) -> None:
    """Write the readings of data files or folders as one file in time order (by timestamp,
    sensor, session, seq), every session and rotation merged, each reading once.

    Example: powmon export data/ --since -7d --format parquet -o week.parquet
    """
    output = None if output == Path("-") else output
    _check(fmt, output, since, until)
    paths = data_files(files)
    if not paths:
        raise click.ClickException("no data files among FILES (expected the writer's CSV files)")
    bad = BadRows()
    rows = selected(paths, sensors, since, until, bad)
    temp_dir = None if output is None else output.parent  # spilled runs: beside the output
    try:  # closing: an error mid-way removes the spilled runs at once, not at collection
        with contextlib.closing(time_ordered(rows, temp_dir)) as ordered:
            written = export(ordered, fmt, output)
    except BrokenPipeError:  # `| head`: the reader has what it wanted; no traceback at exit
        _quiet_stdout()
        raise SystemExit(1) from None
    except OSError as err:  # a full disk, a file gone meanwhile: the error names it
        raise click.ClickException(f"cannot export: {err}") from None
    finally:
        bad.report()
    if written == 0:
        raise click.ClickException(
            "no readings in the files" + (" of " + ", ".join(sensors) if sensors else "")
            + (" in the --since/--until window" if since is not None or until is not None
               else ""))
    click.echo(f"powmon: exported {written} reading(s) from {len(paths)} file(s)"
               + (f" to {output}" if output else ""), err=True)
