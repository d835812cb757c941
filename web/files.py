"""`/files/`: the CSV files in LOCAL_DATA_ROOT for download, and `/report`: a summary.

A file is served only if its name is one the listing shows (a plain `*.csv`, `*.csv.gz` or
`*.csv.zst` directly in the data folder, not a symlink), compared as a whole string: no path
from the URL ever reaches the file system, so `..`, slashes, encoded slashes and links out of
the folder find nothing.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Final
from urllib.parse import quote

from powmon.base.storage import compression_of, plain_name
from powmon.base.text import format_ts


@dataclass(frozen=True, slots=True)
class DataFile:
    name: str
    size: int
    mtime_ns: int


def list_files(root: Path) -> list[DataFile]:
    """Data files and gaps.csv, newest name first (names sort in creation order)."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return []  # no data folder yet: nothing to list
    files = []
    for path in entries:
        if not _listed(path.name) or path.is_symlink() or not path.is_file():
            continue
        try:
            st = path.stat()
        except OSError:
            continue  # rotated or removed meanwhile
        files.append(DataFile(path.name, st.st_size, st.st_mtime_ns))
    return sorted(files, key=lambda f: f.name, reverse=True)


def _listed(name: str) -> bool:
    """A CSV file, or a compressed one (a closed data file, base.storage)."""
    return plain_name(PurePath(name)).endswith(".csv")


_MEDIA: Final = {"gzip": "application/gzip", "zstd": "application/zstd"}


def media_type(path: Path) -> str:
    """What a download is: text/csv, or the compressed file as it is stored."""
    kind = compression_of(path)
    return "text/csv" if kind is None else _MEDIA[kind]


CHUNK = 64 * 1024


def snapshot(path: Path) -> Iterator[bytes]:
    """The file as it is now, to its last complete line.

    The writer appends to the current file while it is downloaded: a plain file response
    announces one length and then finds more (or, mid-write, a partial row). This reads up to
    the size seen at the start and stops after the last newline within it: whole rows only.
    """
    if compression_of(path) is not None:  # closed and never written again: sent whole
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
        return
    with path.open("rb") as handle:
        left = os.fstat(handle.fileno()).st_size
        held = b""  # the bytes after a chunk's last newline: sent only once their row ends
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            chunk = held + chunk
            end = chunk.rfind(b"\n") + 1
            held = chunk[end:]
            if end:
                yield chunk[:end]


def find_file(root: Path, name: str) -> Path | None:
    """The path of a listed file called exactly `name`, else None."""
    for f in list_files(root):
        if f.name == name:
            return root / f.name
    return None


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<link rel="stylesheet" href="/static/style.css{q}"></head><body class="plain">
<header><h1><a href="/{q}">PowMon</a> &rsaquo; {title}</h1></header><main>{body}</main>
</body></html>"""


def page(title: str, body: str, query: str) -> str:
    return _PAGE.format(title=html.escape(title), body=body, q=query)


def files_body(root: Path, query: str) -> str:
    rows = "".join(
        f'<tr><td><a href="/files/{quote(f.name)}{query}" download>{html.escape(f.name)}'
        f"</a></td><td class=num>{f.size:,}</td><td>{format_ts(f.mtime_ns)[:19]}Z</td></tr>"
        for f in list_files(root)
    )
    return (
        f"<p>CSV files in <code>{html.escape(str(root))}</code>: one header row, columns as "
        "in README (CSV files)."
        "</p><table><thead><tr><th>file</th><th class=num>bytes</th><th>modified (UTC)</th>"
        f"</tr></thead><tbody>{rows or '<tr><td colspan=3>no files yet</td></tr>'}</tbody></table>"
    )


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else html.escape(fmt.format(value))


def report_body(report: dict[str, Any], history: dict[str, list[tuple[Any, ...]]]) -> str:
    """A per-sensor summary from the live data: the last minutes of the chart's buckets and
    the heartbeats' counters. The full report from the CSV files is `powmon report`; the
    page does not run it (it reads every file: too slow for a request)."""
    rows = []
    for sensor, s in report["sensors"].items():
        points = history.get(sensor, [])
        n = sum(p[5] for p in points)
        mean = sum(p[1] * p[5] for p in points) / n if n else None
        span = (points[-1][0] - points[0][0]) / 60000 if len(points) > 1 else None
        rows.append(
            f"<tr><td>{html.escape(sensor)}</td><td class=num>{_cell(span, '{:.1f}')}</td>"
            f"<td class=num>{_cell(mean, '{:.2f}')}</td>"
            f"<td class=num>{_cell(min((p[2] for p in points), default=None), '{:.2f}')}</td>"
            f"<td class=num>{_cell(max((p[3] for p in points), default=None), '{:.2f}')}</td>"
            f"<td class=num>{_cell(s['energy_wh'], '{:.3f}')}</td>"
            f"<td class=num>{_cell(s['readings'])}</td><td class=num>{_cell(s['bad_lines'])}</td>"
            f"<td class=num>{_cell(s['gaps'])}</td><td class=num>{_cell(s['lost'])}</td></tr>"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    return (
        f"<p>Live summary at {stamp} UTC, from the last minutes this page has seen and the "
        "processes' heartbeats.</p><table><thead><tr><th>sensor</th><th class=num>minutes</th>"
        "<th class=num>mean W</th><th class=num>min W</th><th class=num>max W</th>"
        "<th class=num>energy Wh</th><th class=num>readings</th><th class=num>bad lines</th>"
        "<th class=num>gaps</th><th class=num>lost</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
