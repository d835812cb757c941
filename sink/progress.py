"""What a sink still misses, on disk before the rows that follow it: the one way to keep it.

A sink's data alone cannot tell "this session started here" from "the hole below here is still
being filled": a writer that joined a session late, stored its live rows and was killed before
the replay of the start arrived would resume from its files as if the session began at its
first stored row, and the start would be neither stored nor named in gaps.csv. So whatever the
core knows is missing (the `progress` it hands to `Sink.store` with each batch) must be
durable no later than the rows that follow the hole.

A sink that commits its readings and the progress in one transaction (the uplink's spool) just
stores both. A sink whose rows go to files keeps the progress in a file of its own beside them
(the writer's `progress.json`), through the two classes here:

- `ProgressLedger` collects the progress handed to `store()`. Before each write of rows the sink
  saves `pending()`: for each stream with holes (now or at the last write that reached the
  disk), the union of what was missing then and everything received since. That is never less
  than what is missing at any moment of the write, whatever part of it a kill -9 leaves on
  disk. After the write, `settled()` makes the current state the new base. At most one atomic
  file replace per flush, none while no stream has a hole; no append-only journal to compact.
- At start, `resume()` takes that saved state less every row found stored after the position
  the sink saved with it (and in its tail): what remains is exactly what is still missing, so a
  restart asks again for the holes still open and never for ones already filled and flushed.
- `ProgressFile` stores it: JSON written to a temporary file, fsynced when the sink syncs, and
  renamed over the old one, so a kill at any instant leaves the old or the new state, never half
  of one; a damaged file is refused with an error and the sink falls back to its tail.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from powmon.sink.tracker import MAX_STREAMS, Key, StreamState

log = logging.getLogger(__name__)

VERSION: Final = 1
Range = tuple[int, int]  # [lo, hi)


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a sink's stored data stood when its progress was last exact: for the writer, a
    data file and its size; rows after it are the ones the saved progress may over-state."""

    file: str = ""  # "" : before the first file
    size: int = 0


@dataclass(frozen=True, slots=True)
class Saved:
    streams: tuple[StreamState, ...]
    mark: Mark


def union(*parts: Iterable[Range]) -> tuple[Range, ...]:
    """The [lo, hi) ranges covering every part, merged and sorted."""
    ranges = sorted(r for part in parts for r in part if r[0] < r[1])
    out: list[list[int]] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def subtract(ranges: Iterable[Range], seqs: Sequence[int]) -> tuple[Range, ...]:
    """`ranges` less the seqs in `seqs` (sorted): what of them is still missing."""
    out: list[Range] = []
    for lo, hi in ranges:
        i = bisect.bisect_left(seqs, lo)
        start = lo
        while i < len(seqs) and seqs[i] < hi:
            if seqs[i] > start:
                out.append((start, seqs[i]))
            start = seqs[i] + 1
            i += 1
        if start < hi:
            out.append((start, hi))
    return tuple(out)


def settle(state: StreamState, seqs: Collection[int]) -> StreamState:
    """A saved state less the seqs found stored: rows past its last seq move the last seq on
    (and what lies between is missing); holes they fill are closed."""
    if not seqs:
        return state
    ordered = sorted(seqs)
    last = max(state.last_seq, ordered[-1])
    above = ((state.last_seq + 1, last + 1),) if last > state.last_seq else ()
    missing = subtract(union(state.missing, above), ordered)
    missing = tuple((max(lo, state.floor), hi) for lo, hi in missing if hi > state.floor)
    return StreamState(state.sensor_id, state.session, last, state.floor, missing)


class ProgressLedger:
    """The progress a file-based sink must save before its next rows, and what it saved."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self._max = max_streams
        self._base: dict[Key, StreamState] = {}  # the state when the last write reached disk
        self._now: dict[Key, StreamState] = {}  # touched since: their newest state
        self._holes: set[Key] = set()  # base streams with holes (saved until filled)
        self._had_holes: set[Key] = set()  # streams with holes at some point since the base

    def update(self, progress: Iterable[StreamState]) -> None:
        """The new state of the streams a batch touched (the core's `progress`)."""
        now, had = self._now, self._had_holes
        for s in progress:
            key = (s.sensor_id, s.session)
            now[key] = s
            if s.missing:
                had.add(key)

    def pending(self) -> list[StreamState]:
        """What to save before writing: per stream with holes (now or at the last write),
        never less than what is missing at any point of the write (the base's holes, and
        everything received since the base). A stream without holes needs no saving: its
        start is in the data (or older than anything the data can vouch for), and what it
        received but did not write is found again as a gap from the readers' heartbeats. One
        whose holes were all filled since the base still does: the fills are in this write,
        which a kill may cut before them (a session joined late, its start replayed at once)."""
        base, holes, had = self._base, self._holes, self._had_holes
        out = [self._widen(key, s) for key, s in self._now.items()
               if s.missing or key in holes or key in had]
        out += [base[key] for key in holes if key not in self._now]
        return out

    def settled(self) -> None:
        """Everything handed over so far is on disk: it is the new base."""
        base, holes = self._base, self._holes
        for key, s in self._now.items():
            base.pop(key, None)
            base[key] = s  # newest last: the oldest are forgotten first
            if s.missing:
                holes.add(key)
            else:
                holes.discard(key)
        self._now = {}
        self._had_holes.clear()
        while len(base) > self._max:
            key = next(iter(base))
            del base[key]
            holes.discard(key)

    def open_holes(self) -> set[Key]:
        """The streams whose newest known state (handed over, or settled) still has holes:
        those a sink must not fold away yet (their fills are still to be counted)."""
        now = self._now
        open_now = {key for key, s in now.items() if s.missing}
        return open_now | {key for key in self._holes if key not in now}

    def resume(
        self, saved: Iterable[StreamState], found: Iterable[StreamState],
        stored: Mapping[Key, Collection[int]],
    ) -> list[StreamState]:
        """The streams to resume: the saved state less the rows `stored` (found after its mark
        and in the tail), and for streams it does not name, what the data shows (`found`).
        They become the base, so the next save widens from them."""
        streams = {(s.sensor_id, s.session): s for s in found}
        for s in saved:
            key = (s.sensor_id, s.session)
            streams[key] = settle(s, stored.get(key, ()))
        self._now = streams
        self.settled()
        return list(streams.values())

    def _widen(self, key: Key, now: StreamState) -> StreamState:
        base = self._base.get(key)
        if base is None:  # new since the base: everything of it is in rows not yet on disk
            missing = union(now.missing, ((now.floor, now.last_seq + 1),))
            return StreamState(now.sensor_id, now.session, now.last_seq, now.floor, missing)
        last = max(base.last_seq, now.last_seq)
        floor = min(base.floor, now.floor)
        missing = union(base.missing, now.missing, ((base.last_seq + 1, last + 1),))
        return StreamState(now.sensor_id, now.session, last, floor, missing)


class ProgressFile:
    """The saved progress of one sink: replaced atomically, never trusted half-written."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._tmp = path.with_name(path.name + ".tmp")
        self.saves = 0

    def save(self, streams: Sequence[StreamState], mark: Mark) -> None:
        """Replace the file; raises OSError, leaving the old one, when it cannot."""
        doc = {
            "version": VERSION,
            "mark": {"file": mark.file, "size": mark.size},
            "streams": [
                [s.sensor_id, s.session, s.last_seq, s.floor, [list(r) for r in s.missing]]
                for s in streams
            ],
        }
        data = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._tmp.open("wb") as f:
                f.write(data)
                if self._fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            raise
        if self._fsync:
            _sync_dir(self.path.parent)
        self.saves += 1

    def load(self) -> Saved | None:
        """The saved progress, or None (no file, or one that cannot be trusted: logged)."""
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()  # a save cut short: the file it would have replaced stands
            log.warning("removed %s: a save was cut short (the previous state is used)",
                        self._tmp.name)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            log.error("cannot read %s (%s): holes open before the restart are found from the "
                      "data files only", self.path, err)
            return None
        try:
            return _parse(json.loads(text))
        except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
            log.error("cannot use %s (%s): holes open before the restart are found from the "
                      "data files only", self.path, err)
            return None


def _parse(doc: Any) -> Saved:
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} progress file")
    mark = doc["mark"]
    file, size = mark["file"], mark["size"]
    if not isinstance(file, str) or not _is_int(size) or size < 0:
        raise ValueError(f"bad mark {mark!r}")
    streams = []
    for entry in doc["streams"]:
        sensor, session, last, floor, missing = entry
        ranges = tuple((lo, hi) for lo, hi in missing)
        if not (isinstance(sensor, str) and isinstance(session, str) and _is_int(last)
                and _is_int(floor) and all(_is_int(lo) and _is_int(hi) for lo, hi in ranges)):
            raise ValueError(f"bad stream {entry!r}")
        streams.append(StreamState(sensor, session, last, floor, ranges))
    return Saved(tuple(streams), Mark(file, size))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); Windows has no directory handles to sync."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
