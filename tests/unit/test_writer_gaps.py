"""Sequence accounting: gaps, late readings, and knowing which seqs were already seen."""

from __future__ import annotations

from powmon.writer.gaps import GapRange, GapTracker, Verdict


def feed(tracker: GapTracker, seqs: list[int], sensor: str = "VIC", session: str = "s1") -> list[
    Verdict
]:  # fmt: skip
    return [tracker.observe(sensor, session, seq) for seq in seqs]


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
    assert tracker.seen("VIC", "s1", 3) is False
    assert tracker.observe("VIC", "s1", 3) is Verdict.FILL
    assert tracker.seen("VIC", "s1", 3) is True
    assert tracker.observe("VIC", "s1", 3) is Verdict.DUPLICATE
    assert tracker.observe("VIC", "s1", 1) is Verdict.DUPLICATE
    assert tracker.late == 3
    assert (tracker.filled, tracker.duplicates) == (1, 2)
    assert tracker.seen("VIC", "s1", 2) is False
    assert tracker.seen("VIC", "s1", 4) is False
    assert tracker.seen("VIC", "s1", 6) is False


def test_seqs_outside_the_window_are_unknown() -> None:
    """Below the first seq seen, or for a stream never seen, `seen` cannot say."""
    tracker = GapTracker()
    feed(tracker, [100, 101])
    assert tracker.seen("VIC", "s1", 50) is None
    assert tracker.seen("ATT", "s1", 0) is None
    assert tracker.observe("VIC", "s1", 50) is Verdict.LATE
    assert tracker.late == 1


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
    assert tracker.seen("VIC", "s1", 5) is None  # its range was dropped
    assert tracker.seen("VIC", "s1", 95) is False  # still a known missing range
    assert tracker.seen("VIC", "s1", 90) is True


def test_the_number_of_streams_is_bounded() -> None:
    """Sessions come and go; the oldest streams are forgotten past the bound."""
    tracker = GapTracker(max_streams=3)
    for session in "abcde":
        feed(tracker, [0, 1], session=session)
    assert tracker.streams == 3
    assert tracker.seen("VIC", "a", 0) is None
    assert tracker.seen("VIC", "e", 0) is True


def test_resume_continues_a_stream_stored_before_a_restart() -> None:
    """After a restart, readings lost while the writer was down show up as a gap."""
    tracker = GapTracker()
    tracker.resume("VIC", "s1", 41)
    assert tracker.observe("VIC", "s1", 42) is Verdict.NEXT
    assert tracker.observe("VIC", "s1", 50) is Verdict.GAP
    assert tracker.missing == 7
