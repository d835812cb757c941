"""Readings in time order, each once, in bounded memory: the external sort of `powmon export`.

Rows in the data files are not in time order: sensors' batches interleave, and readings
replayed after a gap are written long after their neighbours. A year of them does not fit in
memory, so they are sorted in chunks of CHUNK_ROWS; a chunk that does not start after the end
of the run being written starts a new run, a temporary file of msgpack rows (compact, and
read back as fast as it is written); the runs are merged with heapq.merge, FAN_IN at a time
so that open files stay few whatever the number of runs. Data that is mostly in order (the
usual case: only replayed rows are late) gives few, long runs.

A row is sorted as (timestamp, sensor_id, session, seq, ...): the order export promises, and
plain tuple comparison, so no key tuple is built per row. A reading's timestamp is set once,
by its reader, and travels with it through replay and resume, so the copies of a reading
stored twice (same sensor, session and seq) are neighbours in that order, and only the first
is kept.
"""

from __future__ import annotations

import heapq
import itertools
import tempfile
from collections.abc import Generator, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Final

import msgpack

from powmon.common.schema.readings import Reading

# Rows sorted in memory at once. A row held for sorting costs about 400 bytes (the tuple, its
# numbers; ids shared), about 600 with the sort's and the output's own (measured: an export of
# 500 000 rows peaks at 80 MB, 20 MB of it the interpreter), so 100 000 rows are about 60 MB:
# bounded whatever the files hold, small beside a Raspberry Pi's memory, and large enough that
# a day at the demo's 2 x 10 Hz (1.7 M rows) is a handful of runs.
CHUNK_ROWS: Final = 100_000
FAN_IN: Final = 64  # runs merged at once: each holds one open file and its read buffer
_WRITE_ROWS: Final = 8192  # rows packed into one write
_IDS_MAX: Final = 4096  # ids shared at once (sessions come and go: bounded)

Row = tuple[int, str, str, int, float, float, float, float, int]  # ts_ns first: sorts in time


def time_ordered(
    readings: Iterable[Reading], temp_dir: Path | None = None, chunk_rows: int = CHUNK_ROWS
) -> Generator[Reading, None, None]:
    """The readings by (ts_ns, sensor_id, session, seq), each reading once; runs spill to a
    temporary folder in `temp_dir` (None: the system's), removed when this ends or is
    closed."""
    with tempfile.TemporaryDirectory(prefix="powmon-export-", dir=temp_dir) as folder:
        runs = _Runs(Path(folder))
        rows = _rows(readings)
        chunk = list(itertools.islice(rows, chunk_rows))
        chunk.sort()
        if len(chunk) < chunk_rows:  # all of it fitted: no file needed
            yield from _once(chunk)
            return
        while chunk:
            runs.add(chunk)
            chunk.clear()  # before the next is read: one chunk in memory, not two
            chunk.extend(itertools.islice(rows, chunk_rows))
            chunk.sort()
        yield from _once(runs.merged())


def _rows(readings: Iterable[Reading]) -> Iterator[Row]:
    """The readings as sortable rows, their ids shared: the csv module makes new strings for
    every row, two per row that would otherwise each be held until the chunk is written."""
    ids: dict[str, str] = {}
    for r in readings:
        sensor_id, session = r.sensor_id, r.session
        yield (r.ts_ns, ids.setdefault(sensor_id, sensor_id), ids.setdefault(session, session),
               r.seq, r.raw, r.volts, r.amps, r.watts, r.flags)
        if len(ids) > _IDS_MAX:
            ids.clear()


def _once(rows: Iterable[Row]) -> Iterator[Reading]:
    """The sorted rows as Readings, leaving out a row whose reading came just before."""
    last: tuple[int, str, str, int] | None = None
    for ts_ns, sensor_id, session, seq, raw, volts, amps, watts, flags in rows:
        key = (ts_ns, sensor_id, session, seq)
        if key != last:
            last = key
            yield Reading(sensor_id, session, seq, ts_ns, raw, volts, amps, watts, flags)


class _Runs:
    """Sorted runs on disk: chunks are appended to the last run while they follow it in
    order, else start a new one; FAN_IN runs are merged into one as soon as they exist."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: list[Path] = []
        self.out: IO[bytes] | None = None
        self.last: Row | None = None
        self.made = 0

    def add(self, chunk: list[Row]) -> None:
        """Append a sorted, non-empty chunk."""
        if self.out is None or self.last is None or chunk[0] < self.last:
            self._close()
            if len(self.paths) >= FAN_IN:
                self._merge_all()
            self.out = self._new_run()
        _write(self.out, chunk)
        self.last = chunk[-1]

    def merged(self) -> Iterator[Row]:
        """Every row of every run, in order (each run read once, as it is merged)."""
        self._close()
        with ExitStack() as stack:
            files = [stack.enter_context(p.open("rb")) for p in self.paths]
            yield from heapq.merge(*(_unpacked(f) for f in files))

    def _new_run(self) -> IO[bytes]:
        self.made += 1
        path = self.folder / f"run-{self.made:06d}"
        self.paths.append(path)
        return path.open("wb")

    def _merge_all(self) -> None:
        """Replace the runs by one: their merge (so open files stay at most FAN_IN)."""
        old, self.paths = self.paths, []
        rows = heapq.merge(*(_read(p) for p in old))
        with self._new_run() as out:
            while batch := list(itertools.islice(rows, _WRITE_ROWS)):
                _write(out, batch)
        for path in old:
            path.unlink()

    def _close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def _write(out: IO[bytes], rows: list[Row]) -> None:
    pack = msgpack.Packer().pack
    for start in range(0, len(rows), _WRITE_ROWS):
        out.write(b"".join(map(pack, rows[start : start + _WRITE_ROWS])))


def _read(path: Path) -> Iterator[Row]:
    with path.open("rb") as f:
        yield from _unpacked(f)


def _unpacked(f: IO[bytes]) -> Iterator[Row]:
    rows: Iterator[Row] = msgpack.Unpacker(f, use_list=False, read_size=1 << 16)
    yield from rows
