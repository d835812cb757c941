"""Resuming from the data files alone: where to append, and what the stored tail says.

The data on disk is the source of truth for a restarted writer: the newest file is where
appending resumes (the one with the highest counter, base.storage), a torn last row is cut off,
and the newest rows tell the last stored seq of each stream and the holes below it. The
original script remembered its current file by rewriting settings.yaml on every rotation,
which lost the setting (and the secret in it) whenever it crashed mid-write.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

from powmon.base.storage import (
    CSV_FIELDS,
    FLAGS,
    LINE_TERMINATOR,
    SENSOR,
    SEQ,
    SESSION,
    TS,
    FileNaming,
    compression_of,
    data_rows,
    find_current,
    list_files,
    open_text,
    read_tail,
)
from powmon.base.text import parse_ts
from powmon.sink.api import Key, Mark, StreamState

log = logging.getLogger(__name__)

# How much of the newest files to read on start to learn the last stored seq of each stream.
TAIL_BYTES: Final = 4 * 1024 * 1024
# How much data to search, newest first, for a session the tail did not show.
SCAN_BYTES: Final = 32 * 1024 * 1024
# An ended session is resumed this long after its last stored row (on the sensor's newest row's
# clock): `powmon run` lists ended readers for 10 minutes (supervisor.run.GONE_KEEP_S), and a writer
# that was down learns a session's missing tail from that list only for a session it knows.
ENDED_KEPT_S: Final = 600.0

def cut_torn_row(root: Path, naming: FileNaming) -> int:
    """Cut a partial last row (a writer killed in mid-write) off the newest file; bytes cut.

    Only the newest file can end torn, and only the writer (which holds the data root's lock)
    calls this, at start, before it reads the tail: so the torn row is neither taken for a
    stored reading nor left for a reader of the file to trip over. The reading it held comes
    again by replay, or is named as lost.
    """
    current = find_current(root, naming)
    if current is None or compression_of(current[1]) is not None:
        return 0  # a compressed file was closed whole: appending never resumes there
    path = current[1]
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - TAIL_BYTES)
        f.seek(start)
        data = f.read(size - start)
        if not data or data.endswith(LINE_TERMINATOR.encode()):
            return 0
        end = data.rfind(LINE_TERMINATOR.encode())
        if end < 0:
            return 0  # no complete line in reach: leave it (resume_size starts a new file)
        f.truncate(start + end + 1)
    cut = size - (start + end + 1)
    log.warning("cut a torn last row (%d bytes) from %s: a writer was stopped in mid-write",
                cut, path.name)
    return cut


def resume_size(path: Path, limit: int, header: bytes) -> int | None:
    """The size of `path` if rows may be appended to it, else None (start a new file).

    Appending is safe only below the limit, under our own header (a file from another schema
    version is left alone) and after a complete row (cut_torn_row makes it so at start).
    """
    if compression_of(path) is not None:
        return None  # closed and compressed: the next rows go to a new file
    size = path.stat().st_size
    if size == 0:
        return 0
    if size >= limit or size < len(header):
        return None
    with path.open("rb") as f:
        first = f.read(len(header))
        f.seek(size - 1)
        last = f.read(1)
    if first != header or last != LINE_TERMINATOR.encode():
        log.warning("not appending to %s: header or last row is not as expected", path.name)
        return None
    return size


def tail_streams(root: Path, naming: FileNaming, limit: int = TAIL_BYTES) -> list[StreamState]:
    """Per stream, the last stored seq and the holes below it, from the newest `limit` bytes.

    The data on disk is the source of truth: seeding the gap tracker from it makes readings
    published while the writer was down show up as a gap instead of passing unnoticed, and a
    hole still open when the writer died (killed in mid-recovery) gets asked for again. Live
    rows of a session are stored in seq order, so the lowest live seq in the tail is where the
    tail can vouch for the stream (its floor); replayed rows (flag `replayed`) below it were
    filling older holes.
    """
    return streams_of(tail_rows(root, naming, limit))


def streams_of(rows: Iterable[list[str]]) -> list[StreamState]:
    """tail_streams of rows already read (the writer reads its tail once, for energy too)."""
    live: dict[tuple[str, str], set[int]] = {}
    replayed: dict[tuple[str, str], set[int]] = {}
    for row in rows:
        into = replayed if "replayed" in row[FLAGS] else live
        into.setdefault((row[SENSOR], row[SESSION]), set()).add(int(row[SEQ]))
    return [
        _stream_state(key, live.get(key, set()), replayed.get(key, set()))
        for key in live.keys() | replayed.keys()
    ]


def worth_resuming(
    streams: Iterable[StreamState], rows: Iterable[list[str]], kept_s: float = ENDED_KEPT_S
) -> list[StreamState]:
    """The streams a restart must know, of those the data and the saved progress show: every
    one with holes, and per sensor its current session and those that ended less than `kept_s`
    before it (by their newest stored row). Older ended sessions are complete and over: no
    reading of theirs can come any more, so resuming them would only grow the writer's state
    (and its `streams` count) by a session per reader restart. A stream the rows do not show
    (named by the saved progress alone) is kept."""
    newest: dict[Key, str] = {}
    for row in rows:  # ISO 8601 UTC with microseconds: text order is time order
        key = (row[SENSOR], row[SESSION])
        if row[TS] > newest.get(key, ""):
            newest[key] = row[TS]
    last_ns: dict[Key, int] = {}
    for key, ts in newest.items():
        with contextlib.suppress(ValueError):
            last_ns[key] = parse_ts(ts)
    sensor_ns: dict[str, int] = {}
    for (sensor, _), ns in last_ns.items():
        sensor_ns[sensor] = max(ns, sensor_ns.get(sensor, ns))
    limit_ns = int(kept_s * 1e9)

    def wanted(s: StreamState) -> bool:
        ns = last_ns.get((s.sensor_id, s.session))
        return bool(s.missing) or ns is None or sensor_ns[s.sensor_id] - ns <= limit_ns

    return [s for s in streams if wanted(s)]


def key_of(row: list[str]) -> Key:
    """The (sensor_id, session) of a data row."""
    return (row[SENSOR], row[SESSION])


def tail_rows(root: Path, naming: FileNaming, limit: int = TAIL_BYTES) -> Iterator[list[str]]:
    """The whole rows of the newest `limit` bytes of data, newest file first, each file's rows
    in file order (headers, partial lines and foreign rows left out)."""
    for text in _newest_texts(root, naming, limit):
        yield from data_rows(io.StringIO(text))


def rows_after(root: Path, naming: FileNaming, mark: Mark) -> Iterator[list[str]]:
    """The rows stored after `mark` (a file and its size when the saved progress was exact),
    oldest first: the rows that progress may still count as missing. Usually one flush's
    worth, whatever its size (the tail's 4 MB may not reach back that far).

    Rows are stored, wherever they are found, so reading too much is harmless: a file shorter
    than its mark (changed by hand) is read whole, and without its file everything after it
    is.
    """
    first = naming.counter_of(mark.file) if mark.file else None
    for counter, path in list_files(root, naming):
        if first is not None and counter < first:
            continue
        try:
            if path.name != mark.file:  # a later file, or the marked one since compressed
                with open_text(path) as text:
                    yield from data_rows(text)
                continue
            with path.open("rb") as raw:
                size = raw.seek(0, os.SEEK_END)
                raw.seek(mark.size if mark.size <= size else 0)
                text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
                try:
                    yield from data_rows(text)
                finally:
                    text.detach()  # `raw` is closed by its own `with`
        except OSError as err:
            log.warning("cannot read %s: %s", path.name, err)


def _stream_state(key: tuple[str, str], live: set[int], replayed: set[int]) -> StreamState:
    floor = min(live) if live else min(replayed)
    seqs = sorted(s for s in live | replayed if s >= floor)
    holes = tuple((a + 1, b) for a, b in itertools.pairwise(seqs) if b > a + 1)
    return StreamState(key[0], key[1], seqs[-1], floor, holes)


def scan_session(
    root: Path, naming: FileNaming, sensor_id: str, session: str, limit: int = SCAN_BYTES
) -> int | None:
    """The highest stored seq of one session in the newest `limit` bytes of data, or None.

    For a session the tail did not show (a reader silent for a long time): rows are found by
    the session text, which is unique, and only those lines are parsed.
    """
    needle = f",{session},"
    best: int | None = None
    for text in _newest_texts(root, naming, limit):
        start = text.find(needle)
        while start >= 0:
            line_start = text.rfind("\n", 0, start) + 1
            line_end = text.find("\n", start)
            row = next(csv.reader([text[line_start : line_end if line_end >= 0 else None]]), [])
            if (
                len(row) == len(CSV_FIELDS)
                and row[SENSOR] == sensor_id
                and (row[SESSION] == session and row[SEQ].isdigit())
            ):
                best = max(best if best is not None else -1, int(row[SEQ]))
            start = text.find(needle, start + 1)
    return best


def _newest_texts(root: Path, naming: FileNaming, limit: int) -> Iterator[str]:
    """The newest `limit` bytes of data as text, newest file first, each from the start of a
    line; a file that cannot be read (EOFError: a compressed file cut short) is logged and
    passed over."""
    budget = limit
    for _, path in reversed(list_files(root, naming)):
        try:
            data, budget = read_tail(path, budget)
        except (OSError, EOFError) as err:
            log.warning("cannot read the tail of %s: %s", path.name, err)
            continue
        yield data.decode("utf-8", errors="replace")
        if budget <= 0:
            break
