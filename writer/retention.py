"""Retention: the writer deletes its oldest closed data files, so that the disk never fills.

Two rules, both off unless set (docs/writer.md, "Retention"): DATA_MAX_BYTES caps the total
on-disk size of the data files (plain and compressed alike: a `.csv.gz` counts what it takes on
disk), DATA_KEEP_DAYS the age of a closed file's newest row (read from its tail, so a file of
old rows written today still goes). Only closed files are deleted, lowest counter first, and
deletion stops at the first file the rules keep: what remains is always the newest run of
files. The file being written, the highest counter, is never deleted: it is not listed as a
candidate at all.

The writer applies the rules at start, after every rotation (the only moment the total can
pass the cap by a file) and now and then for the age rule (time passes without rotations).
On a full disk with retention on it frees one closed file by the same order before it would
keep rows waiting or drop readings (`free_one`). Each deletion is logged at INFO with the file,
its time range and its row count, and counted in the heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from powmon.base.storage import (
    COMPRESSED_SUFFIX,
    TS,
    FileNaming,
    data_rows,
    list_files,
    open_bytes,
    open_text,
    plain_name,
    read_tail,
)
from powmon.base.text import format_ts, parse_ts

log = logging.getLogger(__name__)

TAIL_BYTES: Final = 64 * 1024  # a file's newest rows are in its last 64 KiB (rows are ~80 B)
HEAD_LINES: Final = 16  # a file's first row is in its first lines (after the header)
_CHUNK: Final = 1 << 20
DAY_S: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class Span:
    """A closed file's first and newest row timestamps (ns; None for a file without rows)."""

    first_ns: int | None
    last_ns: int | None


def _timestamps(rows: list[list[str]]) -> list[int]:
    stamps = []
    for row in rows:
        with contextlib.suppress(ValueError):
            stamps.append(parse_ts(row[TS]))
    return stamps


def file_span(path: Path) -> Span:
    """The first row's timestamp (from the head) and the newest one (the largest in the tail:
    replayed rows may come after newer live ones); OSError if the file cannot be read."""
    head: list[list[str]] = []
    with open_text(path) as f:
        for row in data_rows(f):
            head.append(row)
            if len(head) >= HEAD_LINES:
                break
    firsts = _timestamps(head[:1])
    data, _ = read_tail(path, TAIL_BYTES)
    lasts = _timestamps(list(data_rows(data.decode("utf-8", "replace").splitlines())))
    return Span(firsts[0] if firsts else None, max(lasts) if lasts else None)


def count_rows(path: Path) -> int:
    """The rows of a closed file: its lines less the header (every closed file ends in a whole
    row). Counted in bytes, decompressed as read: a deletion is rare, a file a few MB."""
    lines = 0
    with open_bytes(path) as f:
        while chunk := f.read(_CHUNK):
            lines += chunk.count(b"\n")
    return max(lines - 1, 0)


def _siblings(path: Path) -> list[Path]:
    """Every form of one counter's file on disk: the plain file and its compressed copies
    (both exist for a moment while a file is compressed)."""
    plain = path.with_name(plain_name(path))
    return [plain.with_name(plain.name + s) for s in dict.fromkeys(COMPRESSED_SUFFIX.values())]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Retention:
    """The two rules over one writer's data files, and what they deleted since start."""

    def __init__(self, root: Path, naming: FileNaming, *, max_bytes: int | None,
                 keep_days: float | None, wall: Callable[[], float]) -> None:
        self._root = root
        self._naming = naming
        self.max_bytes = max_bytes
        self.keep_days = keep_days
        self._wall = wall
        self._spans: dict[str, Span] = {}  # plain name -> span: closed files do not change
        self.files_deleted = 0
        self.bytes_deleted = 0
        self.oldest_ns: int | None = None

    @property
    def enabled(self) -> bool:
        return self.max_bytes is not None or self.keep_days is not None

    def span(self, path: Path, *, closed: bool = True) -> Span:
        """A file's span, remembered for a closed file (which no longer changes), read again
        each time for the file being written."""
        name = plain_name(path)
        span = self._spans.get(name)
        if span is None:
            try:
                span = file_span(path)
            except OSError as err:
                log.warning("retention: cannot read %s: %s", path.name, err)
                span = Span(None, None)
            if closed:
                self._spans[name] = span
        return span

    def _expired(self, path: Path, now: float) -> bool:
        if self.keep_days is None:
            return False
        last = self.span(path).last_ns
        newest = last / 1e9 if last is not None else os.stat(path).st_mtime  # no rows: mtime
        return newest < now - self.keep_days * DAY_S

    def enforce(self) -> int:
        """Delete what the rules say, oldest first, stopping at the first file they keep;
        return how many files went. OSError from listing or deleting is logged, not raised:
        retention never stops the writer."""
        deleted = 0
        if not self.enabled:
            self._update_oldest()
            return deleted
        try:
            files = list_files(self._root, self._naming)
            total = sum(_size(p) for _, p in files)
            now = self._wall()
            for _, path in files[:-1]:
                if self.max_bytes is not None and total > self.max_bytes:
                    why = f"DATA_MAX_BYTES {self.max_bytes} (data files {total} bytes)"
                elif self._expired(path, now):
                    why = f"DATA_KEEP_DAYS {self.keep_days:g}"
                else:
                    break
                total -= self._delete(path, why)
                deleted += 1
        except OSError as err:
            log.error("retention: %s", err)
        self._update_oldest()
        return deleted

    def free_one(self) -> bool:
        """The disk is full: delete the oldest closed file whatever the rules say (with
        retention on only); False when there is none to delete."""
        if not self.enabled:
            return False
        try:
            closed = list_files(self._root, self._naming)[:-1]  # the newest is being written
            if not closed:
                return False
            self._delete(closed[0][1], "disk full")
        except OSError as err:
            log.error("retention: cannot free space: %s", err)
            return False
        finally:
            self._update_oldest()
        return True

    def _delete(self, path: Path, why: str) -> int:
        """Delete one counter's file (every form of it); return the bytes freed."""
        span = self.span(path)
        try:
            rows: int | None = count_rows(path)
        except OSError as err:
            log.warning("retention: cannot count the rows of %s: %s", path.name, err)
            rows = None
        freed = 0
        for form in _siblings(path):
            size = _size(form)
            with contextlib.suppress(FileNotFoundError):
                form.unlink()
                freed += size
        self._spans.pop(plain_name(path), None)
        self.files_deleted += 1
        self.bytes_deleted += freed
        log.info("retention: deleted %s (%s to %s, %s rows, %d bytes): %s", path.name,
                 _text(span.first_ns), _text(span.last_ns), "?" if rows is None else rows,
                 freed, why)
        return freed

    def _update_oldest(self) -> None:
        """The first row of the oldest file kept: the oldest data still on disk."""
        self.oldest_ns = None
        with contextlib.suppress(OSError):
            files = list_files(self._root, self._naming)
            for i, (_, path) in enumerate(files):
                self.oldest_ns = self.span(path, closed=i < len(files) - 1).first_ns
                if self.oldest_ns is not None:
                    break

    def counters(self) -> dict[str, object]:
        """For the heartbeat: deletions since start and the oldest data kept (its timestamp,
        as in the files; empty while unknown)."""
        return {"files_deleted": self.files_deleted, "bytes_deleted": self.bytes_deleted,
                "oldest_data": _text(self.oldest_ns, "")}


def _text(ts_ns: int | None, none: str = "?") -> str:
    return none if ts_ns is None else format_ts(ts_ns)
