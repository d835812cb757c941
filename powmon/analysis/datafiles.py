"""Reading the writer's CSV files back, streaming, for `powmon report`, `powmon plot` and
`powmon export`.

Files are taken in creation order: rotated files by the counter in their name (the writer
puts it first for that reason, docs/writer.md), whatever order the shell listed them in; a
folder stands for the data files in it, plain or compressed (`.csv.gz`, `.csv.zst`: read exactly
like `.csv`, base.storage.open_text). gaps.csv and other CSV files are not data files and
are skipped, saying so. Rows are parsed one at a time, so memory does not grow with the files;
a row that cannot be read (the cut-off last line of a crash, a hand edit) is skipped and
counted per file, never silently.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import click

from powmon.base.storage import (
    DATA_GLOBS,
    StoredRow,
    creation_order,
    is_data_header,
    one_copy,
    open_text,
    parse_reading,
    parse_row,
)
from powmon.common.schema.readings import Reading

_Row = TypeVar("_Row")


def data_files(paths: Iterable[Path]) -> list[Path]:
    """The data files among `paths` (folders stand for their *.csv files), oldest first.

    Raises click.BadParameter for a path that does not exist.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for pattern in DATA_GLOBS for p in path.glob(pattern) if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise click.BadParameter(f"{path}: no such file or folder", param_hint="FILES")
    unique = one_copy(dict.fromkeys(p.resolve() for p in found))
    data = [p for p in unique if _is_data_file(p)]
    return sorted(data, key=creation_order)


def _is_data_file(path: Path) -> bool:
    try:
        with open_text(path) as handle:
            header = next(csv.reader(handle), [])
    except (OSError, EOFError, csv.Error) as err:  # EOFError: a gzip file cut short
        raise click.BadParameter(f"{path}: cannot read it: {err}", param_hint="FILES") from err
    if is_data_header(header):
        return True
    print(
        f"powmon: skipping {path}: not a data file (its header is not the data columns)",
        file=sys.stderr,
    )
    return False


@dataclass(slots=True)
class BadRows:
    """Rows skipped per file, with the first reason, for one line per file at the end."""

    counts: dict[Path, int] = field(default_factory=dict)
    first: dict[Path, str] = field(default_factory=dict)

    def add(self, path: Path, line: int, why: str) -> None:
        self.counts[path] = self.counts.get(path, 0) + 1
        self.first.setdefault(path, f"line {line}: {why}")

    def report(self) -> None:
        for path, count in self.counts.items():
            print(
                f"powmon: {path}: skipped {count} row(s) that are not readings "
                f"(first at {self.first[path]})",
                file=sys.stderr,
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def rows(files: Iterable[Path], bad: BadRows) -> Iterator[StoredRow]:
    """Every reading of the files, in file order, as the typed fields report and plot use;
    bad rows go to `bad`."""
    return _parsed(files, bad, parse_row)


def readings(files: Iterable[Path], bad: BadRows) -> Iterator[Reading]:
    """Every reading of the files, in file order, whole (every column, `powmon export`); bad
    rows (also those with a non-finite number or an unknown flag) go to `bad`."""
    return _parsed(files, bad, parse_reading)


def _parsed(
    files: Iterable[Path], bad: BadRows, parse: Callable[[list[str]], _Row]
) -> Iterator[_Row]:
    """The rows of the files through `parse`, in file order; bad rows go to `bad`.

    This is the inner loop of report, plot and export (millions of rows): one try covers the
    whole file, re-entered only after a bad line.
    """
    for path in files:
        with open_text(path) as handle:
            reader = csv.reader(handle)
            next(reader, None)  # the header, checked by data_files
            while True:
                try:
                    for fields in reader:
                        yield parse(fields)
                    break
                except (ValueError, csv.Error) as err:  # csv.Error: a NUL byte, say
                    bad.add(path, reader.line_num, str(err))
                except (EOFError, OSError) as err:  # a compressed file cut short, or damaged
                    bad.add(path, reader.line_num, f"cannot read on: {err}")
                    break
