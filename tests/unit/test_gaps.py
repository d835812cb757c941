"""GapTracker: gaps, late readings, knowing which seqs were already seen, bounded memory."""

from __future__ import annotations

from powmon.sink.tracker import GapRange, GapTracker, StreamState, Verdict


def feed(tracker: GapTracker, seqs: list[int], sensor: str = "VIC", session: str = "s1") -> list[
    Verdict
]:
    return [tracker.observe(sensor, session, seq) for seq in seqs]


def seen(tracker: GapTracker, sensor_id: str, session: str, seq: int) -> bool | None:
    """Whether the tracker takes this reading as already observed (None: it cannot tell,
    below the window it keeps), from its public state."""
    if not tracker.knows(sensor_id, session):
        return None
    state = tracker.state(sensor_id, session)
    if seq < state.floor:
        return None
    if seq > state.last_seq:
        return False
    return not any(lo <= seq < hi for lo, hi in state.missing)


def test_an_unbroken_sequence_has_no_gaps() -> None:
    """0, 1, 2, ... is what a reader sends: no gap, nothing missing, nothing late."""
    tracker = GapTracker()
    verdicts = feed(tracker, list(range(100)))
    assert verdicts[0] is Verdict.FIRST
    assert set(verdicts[1:]) == {Verdict.NEXT}
    assert (tracker.gaps, tracker.missing, tracker.late) == (0, 0, 0)


def test_a_jump_forward_counts_one_gap_and_the_missing_readings() -> None:
    """Seq 10 after 4 means 5..9 were lost: one gap of five, kept in the recent ranges."""
    tracker = GapTracker()
    assert feed(tracker, [0, 1, 2, 3, 4, 10, 11])[5] is Verdict.GAP
    assert (tracker.gaps, tracker.missing) == (1, 5)
    assert list(tracker.recent) == [GapRange("VIC", "s1", 5, 9)]
    assert tracker.recent[-1].count == 5


def test_streams_are_per_sensor_and_session() -> None:
    """A new session (reader restart) starts again at 0 without counting a gap."""
    tracker = GapTracker()
    feed(tracker, [0, 1, 2], session="a")
    feed(tracker, [0, 1], session="b")
    feed(tracker, [0, 1], sensor="ATT", session="a")
    assert tracker.gaps == 0
    assert tracker.streams == 3


def test_a_late_reading_fills_its_gap_once_and_then_is_a_duplicate() -> None:
    """Late readings are counted; the tracker tells a gap filler from a repeat."""
    tracker = GapTracker()
    feed(tracker, [0, 1, 5])
    assert seen(tracker, "VIC", "s1", 3) is False
    assert tracker.observe("VIC", "s1", 3) is Verdict.FILL
    assert seen(tracker, "VIC", "s1", 3) is True
    assert tracker.observe("VIC", "s1", 3) is Verdict.DUPLICATE
    assert tracker.observe("VIC", "s1", 1) is Verdict.DUPLICATE
    assert tracker.late == 3
    assert (tracker.filled, tracker.duplicates) == (1, 2)
    assert seen(tracker, "VIC", "s1", 2) is False
    assert seen(tracker, "VIC", "s1", 4) is False
    assert seen(tracker, "VIC", "s1", 6) is False


def test_a_stream_first_seen_past_zero_misses_its_start() -> None:
    """A session first seen at seq 100 (slow joiner, late start) is missing 0..99."""
    tracker = GapTracker()
    assert tracker.observe("VIC", "s1", 100) is Verdict.GAP
    assert list(tracker.recent) == [GapRange("VIC", "s1", 0, 99)]
    assert seen(tracker, "VIC", "s1", 50) is False
    assert tracker.observe("VIC", "s1", 50) is Verdict.FILL
    assert seen(tracker, "ATT", "s1", 0) is None


def test_seqs_below_the_floor_are_unknown() -> None:
    """Below where the stored data vouches for a stream, `seen` cannot say: LATE, not FILL."""
    tracker = GapTracker()
    tracker.resume("VIC", "s1", 101, floor=90)
    assert seen(tracker, "VIC", "s1", 50) is None
    assert seen(tracker, "VIC", "s1", 95) is True
    assert tracker.observe("VIC", "s1", 50) is Verdict.LATE
    assert tracker.observe("VIC", "s1", 95) is Verdict.DUPLICATE
    assert tracker.late == 2


def test_a_lookup_resumes_a_session_the_tail_did_not_show() -> None:
    """A session first seen past 0 is looked up first; found: only what follows is missing."""
    asked: list[tuple[str, str]] = []

    def lookup(sensor: str, session: str) -> tuple[int, int] | None:
        asked.append((sensor, session))
        return (41, 42) if session == "old" else None

    tracker = GapTracker(lookup=lookup)
    assert tracker.observe("VIC", "old", 42) is Verdict.NEXT
    assert tracker.observe("VIC", "new", 5) is Verdict.GAP
    assert tracker.observe("VIC", "zero", 0) is Verdict.FIRST
    assert asked == [("VIC", "old"), ("VIC", "new")]
    assert tracker.state("VIC", "new") == StreamState("VIC", "new", 5, 0, ((0, 5),))


def test_a_heartbeat_past_the_last_reading_opens_a_gap() -> None:
    """A reader that says it published up to seq 9 when 0..6 arrived: 7..9 are missing."""
    tracker = GapTracker()
    feed(tracker, list(range(7)))
    assert not tracker.advance("VIC", "s1", 7)
    assert tracker.advance("VIC", "s1", 10)
    assert tracker.state("VIC", "s1") == StreamState("VIC", "s1", 9, 0, ((7, 10),))
    assert tracker.observe("VIC", "s1", 10) is Verdict.NEXT
    assert not tracker.advance("ATT", "s2", 0)  # a fresh reader: nothing missing
    assert tracker.observe("ATT", "s2", 0) is Verdict.NEXT
    assert tracker.advance("ATT", "s3", 4)  # never seen, already at 4: 0..3 missing
    assert tracker.state("ATT", "s3") == StreamState("ATT", "s3", 3, 0, ((0, 4),))


def test_give_up_closes_a_range_and_says_what_was_still_open() -> None:
    """Giving up 3..12 of holes 2..4 and 8..9 returns exactly 3..4 and 8..9; 2 stays open."""
    tracker = GapTracker()
    feed(tracker, [0, 1, 5, 6, 7, 10])
    assert tracker.give_up(("VIC", "s1"), 3, 13) == [(3, 5), (8, 10)]
    assert tracker.state("VIC", "s1").missing == ((2, 3),)
    assert tracker.observe("VIC", "s1", 4) is Verdict.DUPLICATE  # closed: never stored now


def test_missing_ranges_are_bounded_per_stream() -> None:
    """Many gaps keep only the most recent ranges; older seqs become unknown, not 'seen'."""
    tracker = GapTracker(max_ranges=4, recent=3)
    seqs = [0]
    for i in range(1, 11):
        seqs.append(i * 10)  # gaps of nine each time
    feed(tracker, seqs)
    assert tracker.gaps == 10
    assert tracker.missing == 90
    assert len(tracker.recent) == 3
    assert seen(tracker, "VIC", "s1", 5) is None  # its range was dropped
    assert seen(tracker, "VIC", "s1", 95) is False  # still a known missing range
    assert seen(tracker, "VIC", "s1", 90) is True
    assert [(g.first, g.last) for g in tracker.take_evicted()] == [(k * 10 + 1, k * 10 + 9)
                                                            for k in range(6)]


def test_the_number_of_streams_is_bounded() -> None:
    """Sessions come and go; finished streams are forgotten first, holes are reported."""
    tracker = GapTracker(max_streams=3)
    feed(tracker, [0, 5], session="holes")
    for session in "abcd":
        feed(tracker, [0, 1], session=session)
    assert tracker.streams == 3
    assert seen(tracker, "VIC", "a", 0) is None
    assert seen(tracker, "VIC", "d", 0) is True
    assert tracker.knows("VIC", "holes")
    assert tracker.take_evicted() == []
    for session in "efg":  # streams with holes of their own: at last the oldest hole goes
        feed(tracker, [0, 3], session=session)
    assert not tracker.knows("VIC", "holes")
    assert tracker.take_evicted() == [GapRange("VIC", "holes", 1, 4)]


def test_a_full_table_forgets_a_superseded_session_before_a_live_one() -> None:
    """ATT's live session was added first, VIC's sessions later: when the table is full, the
    first finished stream of a sensor that has a newer session goes, never ATT's live one
    (forgetting it would make its next reading a gap from 0 and ask for what is stored)."""
    tracker = GapTracker(max_streams=3)
    feed(tracker, [0, 1], sensor="ATT", session="live")
    feed(tracker, [0, 1], session="old")
    feed(tracker, [0, 1], session="new")
    feed(tracker, [0, 1], sensor="ELK", session="e1")
    assert tracker.knows("ATT", "live")
    assert not tracker.knows("VIC", "old")
    assert tracker.observe("ATT", "live", 2) is Verdict.NEXT


def test_resume_continues_a_stream_stored_before_a_restart() -> None:
    """After a restart, readings lost while the writer was down show up as a gap."""
    tracker = GapTracker()
    tracker.resume("VIC", "s1", 41)
    assert tracker.observe("VIC", "s1", 42) is Verdict.NEXT
    assert tracker.observe("VIC", "s1", 50) is Verdict.GAP
    assert tracker.missing == 7
