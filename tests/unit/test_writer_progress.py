"""The writer keeps what it still misses in progress.json, before the rows that follow a hole.

A writer that joins a session late, stores its live rows and is killed before the replay of
the session's start arrives must, restarted, ask for that start again: the tail of its files
alone cannot tell "the session started here" from "the hole below here is still open". Each
test stops a writer at one instant of a flush (before it, between the saved progress and the
rows, in the middle of the rows, after them) and resumes a new writer on the same folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powmon.common.schema.readings import Reading, encode_reading
from powmon.sink.progress import (
    ProgressFile,
    ProgressLedger,
    settle,
    subtract,
    union,
)
from powmon.sink.tracker import StreamState
from powmon.supervisor.run import GONE_KEEP_S
from powmon.writer.resume import ENDED_KEPT_S
from powmon.writer.writer import PROGRESS_FILE, WriterConfig
from tests.writers import Writer, make_writer

KEY = ("VIC", "s1")
T0_NS = 1_795_628_536 * 10**9


def config(root: Path, **overrides: Any) -> WriterConfig:
    base = WriterConfig(
        data_root=root, data_file="data.csv", file_size_limit=10_000_000, flush_interval=0.1,
        sync_write=False, backend="tcp://127.0.0.1:1", frontend="tcp://127.0.0.1:2", hwm=1000,
        heartbeat_interval=1.0,
    )
    return dataclasses.replace(base, **overrides)


def msg(seq: int, session: str = "s1") -> list[bytes]:
    return encode_reading(Reading("VIC", session, seq, T0_NS + seq * 10**6, 512, 0.0, 0.0, 0.0))


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    made: list[Writer] = []
    yield made
    for w in made:
        w.csv.files.close()


def start(writers: list[Writer], root: Path, **overrides: Any) -> Writer:
    """A writer that has read what its folder holds, as at process start."""
    w = make_writer(config(root, **overrides))
    w.core.resume()
    writers.append(w)
    return w


def kill(w: Writer) -> None:
    """As kill -9 would: no last flush, nothing more saved; only the open file is let go."""
    w.csv.files.close()


def stored_seqs(root: Path) -> list[int]:
    seqs: list[int] = []
    for path in sorted(root.glob("data-*.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            seqs += [int(r["seq"]) for r in csv.DictReader(f)]
    return seqs


def late_join(writers: list[Writer], root: Path, **overrides: Any) -> Writer:
    """A writer that first hears the session at seq 5 and has flushed 5..9: [0, 5) missing."""
    w = start(writers, root, **overrides)
    w.core.handle([msg(s) for s in range(5, 10)])
    assert w.core.tracker.missing_of(KEY) == [(0, 5)]
    assert w.csv.flush(0.0)
    return w


def test_a_session_first_seen_past_0_is_asked_for_again_after_a_kill(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """Killed after its first flush, before the replay of 0..4: the restart misses 0..4."""
    kill(late_join(writers, tmp_path))
    again = start(writers, tmp_path)
    assert again.core.tracker.missing_of(KEY) == [(0, 5)]
    assert again.core.tracker.state(*KEY).last_seq == 9
    assert again.core.filler.recovering == 5  # it will ask for them


def test_without_the_progress_file_the_tail_cannot_tell_the_start_from_a_hole(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """The defect the file fixes: from the tail alone, the session seems to start at 5."""
    kill(late_join(writers, tmp_path))
    (tmp_path / PROGRESS_FILE).unlink()
    again = start(writers, tmp_path)
    assert again.core.tracker.missing_of(KEY) == []
    assert again.core.tracker.state(*KEY).floor == 5


def test_killed_between_the_saved_progress_and_the_fill_rows(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """The fill 0..4 was received and the progress saved for the flush, the rows never
    written: the saved state still names 0..4."""
    w = late_join(writers, tmp_path)
    w.core.handle([msg(s) for s in range(5)])  # the replay arrives
    assert w.core.tracker.missing_of(KEY) == []
    w.csv.save_progress()
    kill(w)
    again = start(writers, tmp_path)
    assert again.core.tracker.missing_of(KEY) == [(0, 5)]


def test_a_hole_opened_and_filled_within_one_flush_survives_a_torn_write(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """Joined at seq 3 and given 0..2 by replay before the first flush: no hole is open when
    the flush starts, yet its rows (3, then the fill) may be cut after 3; the saved progress
    still names 0..2 (found by the property test below)."""
    w = start(writers, tmp_path)
    w.core.handle([msg(3)])
    w.core.handle([msg(s) for s in range(3)])
    assert w.core.tracker.missing_of(KEY) == []
    assert w.csv.flush(0.0)
    kill(w)
    [path] = tmp_path.glob("data-*.csv")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))  # the header and seq 3: the fill never made it
    again = start(writers, tmp_path)
    assert stored_seqs(tmp_path) == [3]
    assert again.core.tracker.missing_of(KEY) == [(0, 3)]


def test_killed_in_the_middle_of_the_fill_rows(tmp_path: Path, writers: list[Writer]) -> None:
    """The fill's rows are cut short in mid-row: the rows that made it are not asked for."""
    w = late_join(writers, tmp_path)
    w.core.handle([msg(s) for s in range(5)])
    assert w.csv.flush(0.0)
    kill(w)
    [path] = tmp_path.glob("data-*.csv")
    text = path.read_bytes()
    rows = text.splitlines(keepends=True)
    cut = len(text) - len(rows[-1]) - len(rows[-2]) - len(rows[-3]) // 2  # in row seq 2
    path.write_bytes(text[:cut])
    again = start(writers, tmp_path)
    assert sorted(stored_seqs(tmp_path)) == [0, 1, 5, 6, 7, 8, 9]
    assert again.core.tracker.missing_of(KEY) == [(2, 5)]


def test_a_hole_filled_and_flushed_is_not_asked_for_after_a_restart(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """Killed right after the fill's rows reached the file (the next save never came)."""
    w = late_join(writers, tmp_path)
    w.core.handle([msg(s) for s in range(5)])
    assert w.csv.flush(0.0)
    kill(w)
    again = start(writers, tmp_path)
    assert again.core.tracker.missing_of(KEY) == []
    assert again.core.filler.recovering == 0
    again.core.handle([msg(s) for s in range(10, 12)])
    assert again.csv.flush(0.0)
    assert sorted(stored_seqs(tmp_path)) == list(range(12))


def test_rows_after_the_mark_count_across_rotated_files(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """A fill that rotates through several small files is found stored in all of them."""
    w = late_join(writers, tmp_path, file_size_limit=1024)
    w.core.handle([msg(s) for s in range(5)])
    w.core.handle([msg(s) for s in range(10, 60)])
    assert w.csv.flush(0.0)
    kill(w)
    assert len(list(tmp_path.glob("data-*.csv"))) >= 3
    again = start(writers, tmp_path, file_size_limit=1024)
    assert again.core.tracker.missing_of(KEY) == []
    assert again.core.tracker.state(*KEY).last_seq == 59


def test_a_save_cut_short_leaves_the_previous_state(
    tmp_path: Path, writers: list[Writer], caplog: pytest.LogCaptureFixture
) -> None:
    """A kill while the progress file is being written leaves a partial temporary file, never
    a partial progress file: the previous one is used and the leftover removed."""
    kill(late_join(writers, tmp_path))
    tmp = tmp_path / (PROGRESS_FILE + ".tmp")
    tmp.write_text('{"version": 1, "mark": {"file": "', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        again = start(writers, tmp_path)
    assert again.core.tracker.missing_of(KEY) == [(0, 5)]
    assert not tmp.exists()
    assert "a save was cut short" in caplog.text


@pytest.mark.parametrize(
    "damage",
    ['{"version": 1, "mark": {"file": "da', '{"version": 9, "mark": {}, "streams": []}',
     '{"version": 1, "mark": {"file": "x", "size": 0}, "streams": [["VIC", "s1", "9"]]}',
     "\xff\xfe"],
)
def test_a_damaged_progress_file_is_never_trusted(
    tmp_path: Path, writers: list[Writer], caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """Half a file (copied while written), another version, a wrong shape: refused with an
    error naming the file; the writer starts from its data files."""
    kill(late_join(writers, tmp_path))
    (tmp_path / PROGRESS_FILE).write_text(damage, encoding="latin-1")
    with caplog.at_level(logging.ERROR):
        again = start(writers, tmp_path)
    assert f"cannot use {tmp_path / PROGRESS_FILE}" in caplog.text or "cannot read" in caplog.text
    assert again.core.tracker.state(*KEY).last_seq == 9
    again.core.handle([msg(10)])
    assert again.csv.flush(0.0)  # and it writes on, replacing the damaged file
    assert json.loads((tmp_path / PROGRESS_FILE).read_text(encoding="utf-8"))["version"] == 1


def test_the_file_holds_only_streams_with_holes(tmp_path: Path, writers: list[Writer]) -> None:
    """Sessions without holes are never in the file: it stays small over many sessions, and
    is not written at all while nothing is missing."""
    w = start(writers, tmp_path)
    for n in range(20):
        w.core.handle([encode_reading(Reading("VIC", f"old{n}", s, T0_NS, 1, 0, 0, 0))
                       for s in range(3)])
        assert w.csv.flush(0.0)
    w.core.handle([msg(s, "gappy") for s in (0, 1, 5)])
    assert w.csv.flush(0.0)
    w.core.handle([msg(0, "live")])
    assert w.csv.flush(0.0)
    saved = ProgressFile(tmp_path / PROGRESS_FILE, fsync=False).load()
    assert saved is not None
    assert {s.session for s in saved.streams} == {"gappy"}
    saves = w.csv.progress.saves
    w.core.handle([msg(s, "gappy") for s in (2, 3, 4)])  # the hole closes
    assert w.csv.flush(0.0)
    w.core.handle([msg(1, "live")])
    assert w.csv.flush(0.0)
    w.core.handle([msg(2, "live")])
    assert w.csv.flush(0.0)
    assert w.csv.progress.saves == saves + 2  # the fill's, the empty one after, then none
    saved = ProgressFile(tmp_path / PROGRESS_FILE, fsync=False).load()
    assert saved is not None and saved.streams == ()


# ---- the pure parts ---------------------------------------------------------------------------


def test_union_and_subtract() -> None:
    assert union([(0, 3), (5, 6)], [(2, 5)], [(9, 9)]) == ((0, 6),)
    assert subtract([(0, 10)], [0, 3, 4, 9]) == ((1, 3), (5, 9))
    assert subtract([(0, 2), (5, 7)], []) == ((0, 2), (5, 7))


def test_settle_closes_filled_holes_and_opens_what_lies_past_the_saved_last() -> None:
    saved = StreamState("VIC", "s1", 9, 0, ((0, 10),))
    assert settle(saved, {5, 6, 7, 8, 9}) == StreamState("VIC", "s1", 9, 0, ((0, 5),))
    assert settle(saved, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12}) == StreamState(
        "VIC", "s1", 12, 0, ((10, 12),))


def test_the_ledger_saves_the_base_holes_and_all_received_since() -> None:
    ledger = ProgressLedger()
    ledger.update([StreamState("VIC", "s1", 9, 0, ((0, 5),))])
    assert ledger.pending() == [StreamState("VIC", "s1", 9, 0, ((0, 10),))]
    ledger.settled()
    assert ledger.pending() == [StreamState("VIC", "s1", 9, 0, ((0, 5),))]  # the hole stays
    ledger.update([StreamState("VIC", "s1", 14, 0, ())])  # filled, and 10..14 came
    assert ledger.pending() == [StreamState("VIC", "s1", 14, 0, ((0, 5), (10, 15)))]
    ledger.settled()
    assert ledger.pending() == []


# ---- any kill, anywhere ----------------------------------------------------------------------

Op = tuple[str, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("live"), st.integers(1, 8)),  # n live readings ...
        st.tuples(st.just("jump"), st.integers(1, 6)),  # ... after a jump forward
        st.tuples(st.just("fill"), st.integers(1, 5)),  # the lowest missing seqs arrive late
        st.tuples(st.just("flush"), st.just(0)),
    ),
    min_size=1, max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(first=st.integers(0, 6), script=ops, stage=st.sampled_from(["idle", "saved", "torn"]),
       cut=st.integers(1, 200))
def test_a_kill_at_any_instant_leaves_every_stored_seq_known_and_every_other_missing(
    first: int, script: list[Op], stage: str, cut: int
) -> None:
    """After any history of live readings, jumps, late fills and flushes, a writer killed
    (idle, between its saved progress and its rows, or in mid-row) resumes knowing, for each
    seq up to the last stored one, that it is stored or that it is missing: never both,
    never neither."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        w = make_writer(config(root))
        w.core.resume()
        nxt, missing = first, set(range(first))
        w.core.handle([msg(first)])
        nxt += 1
        for op, n in script:
            if op in ("jump", "live"):
                if op == "jump":  # n readings go missing, the next one arrives
                    missing |= set(range(nxt, nxt + n))
                    nxt += n
                count = 1 if op == "jump" else n
                w.core.handle([msg(s) for s in range(nxt, nxt + count)])
                nxt += count
            elif op == "fill":
                late = sorted(missing)[:n]
                missing -= set(late)
                w.core.handle([msg(s) for s in late])
            else:
                assert w.csv.flush(0.0)
        if stage == "saved":
            w.csv.save_progress()
        elif stage == "torn" and w.csv.files.pending_rows:
            current = w.csv.files.current_file
            before = (root / current).stat().st_size if current else 0
            assert w.csv.flush(0.0)
            path = root / w.csv.files.current_file
            size = path.stat().st_size
            with path.open("r+b") as f:
                f.truncate(max(before if path.name == current else 0, size - cut))
        kill(w)
        again = make_writer(config(root))
        again.core.resume()
        stored = stored_seqs(root)
        assert len(stored) == len(set(stored)), "a row stored twice"
        if not stored:
            return
        state = again.core.tracker.state(*KEY)
        known_missing = {s for lo, hi in state.missing for s in range(lo, hi)}
        assert not known_missing & set(stored), "a stored seq taken for missing"
        assert set(range(max(stored) + 1)) <= set(stored) | known_missing, "a hole forgotten"
        assert state.last_seq >= max(stored)
        again.csv.files.close()


def session_rows(writers: list[Writer], root: Path, gap_ns: int) -> Writer:
    """Session `old` (seqs 0..9), then `new` of the same sensor starting `gap_ns` after it
    ended; flushed, stopped, and a new writer resumed on the folder."""
    w = start(writers, root)
    w.core.handle([msg(s, "old") for s in range(10)])
    late = Reading("VIC", "new", 0, T0_NS + 9 * 10**6 + gap_ns, 512, 0.0, 0.0, 0.0)
    w.core.handle([encode_reading(late)])
    assert w.csv.flush(0.0)
    kill(w)
    return start(writers, root)


def test_a_session_ended_long_before_the_current_one_is_not_resumed(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """A session complete and over for longer than powmon run lists ended readers is left
    out of the resumed state: a restart keeps the sensor's current session, not its history."""
    again = session_rows(writers, tmp_path, 11 * 60 * 10**9)
    assert again.core.tracker.knows("VIC", "new")
    assert not again.core.tracker.knows("VIC", "old")
    assert again.core.counters()["streams"] == 1


def test_a_session_that_ended_minutes_ago_is_still_resumed(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """Within the 10 minutes for which powmon run lists ended readers, an ended session is
    still resumed, so that a writer that was down learns its missing tail from that list and
    names it (reader_restarted): the kill -9 guarantee of docs/guarantees.md."""
    again = session_rows(writers, tmp_path, 60 * 10**9)
    assert again.core.tracker.knows("VIC", "old")
    assert ENDED_KEPT_S >= GONE_KEEP_S
