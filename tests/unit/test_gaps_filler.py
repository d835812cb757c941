"""GapFiller: ask for holes, store what comes back once, give up with a reason, stay bounded."""

from __future__ import annotations

from dataclasses import dataclass, field

from powmon.common.schema.readings import Flag, Reading
from powmon.common.schema.replay import ReplayReply
from powmon.common.schema.status import ReaderProgress, Status
from powmon.sink.filler import GapFiller
from powmon.sink.tracker import (
    REASON_BOUND,
    REASON_NO_ENDPOINT,
    REASON_NO_REPLY,
    REASON_OVERRUN,
    REASON_RESTARTED,
    GapTracker,
)


class Clock:
    """A clock the test moves by hand: deadlines are checked without sleeping."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Reader:
    """Stands in for the replay socket: records what was asked; `reachable` or not."""

    reachable: bool = True
    asked: list[tuple[str, str, int, int]] = field(default_factory=list)

    def __call__(self, sensor: str, session: str, first: int, last: int) -> bool:
        if self.reachable:
            self.asked.append((sensor, session, first, last))
        return self.reachable


def reading(seq: int, session: str = "s1") -> Reading:
    return Reading("VIC", session, seq, seq, 512, 0.0, 0.0, 0.0)


def reply(seqs: range | list[int], available: tuple[int, int], session: str = "s1") -> ReplayReply:
    return ReplayReply("VIC", session, available, tuple(reading(s, session) for s in seqs))


def make(reader: Reader, clock: Clock, max_streams: int = 4096, max_ranges: int = 64) -> GapFiller:
    tracker = GapTracker(max_streams=max_streams, max_ranges=max_ranges)
    return GapFiller(reader, tracker, timeout=2.0, retries=3, grace=5.0, clock=clock)


def live(filler: GapFiller, seqs: list[int], session: str = "s1") -> None:
    """What the writer and uplink do with each live reading."""
    for seq in seqs:
        if filler.tracker.observe("VIC", session, seq).value == "gap":
            filler.opened(("VIC", session))


def test_a_gap_is_asked_once_and_filled_by_the_reply() -> None:
    """Seq 5 after 1: ask 2..4 once; the reply's readings are kept, flagged, and it is done."""
    reader, clock = Reader(), Clock()
    filler = make(reader, clock)
    live(filler, [0, 1, 5])
    filler.tick()
    filler.tick()  # still waiting: no second request before the deadline
    assert reader.asked == [("VIC", "s1", 2, 4)]
    assert filler.recovering == 3
    kept = filler.on_reply(reply(range(2, 5), (0, 5)))
    assert [r.seq for r in kept] == [2, 3, 4]
    assert all(r.flags & Flag.REPLAYED for r in kept)
    assert (filler.replayed, filler.recovering, filler.lost) == (3, 0, 0)
    filler.tick()
    assert reader.asked == [("VIC", "s1", 2, 4)]


def test_a_reading_is_kept_once_whichever_copy_comes_first() -> None:
    """A live copy that beat the replay is kept; the replayed copy is then a duplicate."""
    reader, clock = Reader(), Clock()
    filler = make(reader, clock)
    live(filler, [0, 3])
    filler.tick()
    live(filler, [1])  # a late live copy
    kept = filler.on_reply(reply([1, 2], (0, 3)))
    assert [r.seq for r in kept] == [2]
    assert filler.on_reply(reply([1, 2], (0, 3))) == []  # the same reply twice
    assert filler.tracker.duplicates == 3


def test_what_the_ring_no_longer_holds_is_lost_as_overrun() -> None:
    """Asked 2..9, the ring starts at 6: 2..5 are lost (exactly), 6..9 are kept."""
    reader, clock = Reader(), Clock()
    filler = make(reader, clock)
    live(filler, [0, 1, 10])
    filler.tick()
    kept = filler.on_reply(reply(range(6, 10), (6, 40)))
    assert [r.seq for r in kept] == [6, 7, 8, 9]
    [lost] = filler.take_lost()
    assert (lost.first, lost.last, lost.count, lost.reason) == (2, 5, 4, REASON_OVERRUN)
    assert (filler.lost, filler.lost_ranges, filler.recovering) == (4, 1, 0)


def test_a_restarted_reader_makes_its_old_session_lost() -> None:
    """The reader answers (0, -1) for a session it no longer runs: every hole of it is lost."""
    reader, clock = Reader(), Clock()
    filler = make(reader, clock)
    live(filler, [0, 4, 9])
    filler.tick()
    assert filler.on_reply(reply([], (0, -1))) == []
    lost = filler.take_lost()
    assert [(g.first, g.last, g.reason) for g in lost] == [
        (1, 3, REASON_RESTARTED), (5, 8, REASON_RESTARTED),
    ]


def test_holes_of_a_stream_are_asked_one_after_the_other() -> None:
    """One request per stream at a time: the second hole is asked once the first is answered."""
    reader, clock = Reader(), Clock()
    filler = make(reader, clock)
    live(filler, [0, 4, 9])
    filler.tick()
    assert reader.asked == [("VIC", "s1", 1, 3)]
    filler.on_reply(reply(range(1, 4), (0, 9)))
    filler.tick()
    assert reader.asked[-1] == ("VIC", "s1", 5, 8)


def test_a_reply_cut_short_is_followed_by_a_request_for_the_rest() -> None:
    """A reply carries at most so many readings; the rest of the hole is asked next."""
    reader, clock = Reader(), Clock()
    filler = make(reader, clock)
    live(filler, [0, 10_001])
    filler.tick()
    filler.on_reply(reply(range(1, 5001), (0, 20_000)))
    filler.tick()
    assert reader.asked == [("VIC", "s1", 1, 10_000), ("VIC", "s1", 5001, 10_000)]


def test_an_unanswered_range_is_retried_then_lost_as_no_reply() -> None:
    """Three requests, each given the timeout; after the third deadline the range is lost."""
    reader, clock = Reader(), Clock()
    filler = make(reader, clock)
    live(filler, [0, 6])
    for _ in range(3):
        filler.tick()
        clock.now += 2.0
    assert len(reader.asked) == 3
    assert filler.take_lost() == []
    filler.tick()
    [lost] = filler.take_lost()
    assert (lost.first, lost.last, lost.reason) == (1, 5, REASON_NO_REPLY)
    assert len(reader.asked) == 3
    assert filler.recovering == 0


def test_without_an_endpoint_a_range_is_lost_after_the_grace() -> None:
    """Nobody said where to ask: keep trying for the grace period, then name the loss."""
    reader, clock = Reader(reachable=False), Clock()
    filler = make(reader, clock)
    live(filler, [0, 3])
    filler.tick()
    clock.now += 4.9
    filler.tick()
    assert filler.take_lost() == []
    clock.now += 0.2
    filler.tick()
    [lost] = filler.take_lost()
    assert (lost.first, lost.last, lost.reason) == (1, 2, REASON_NO_ENDPOINT)


def test_a_heartbeat_reveals_readings_lost_at_the_end() -> None:
    """The last readings before a silence never arrived: the heartbeat's seq shows them."""
    reader, clock = Reader(), Clock()
    filler = make(reader, clock)
    live(filler, [0, 1, 2])
    filler.heartbeat(Status("reader", "VIC", 1, 0, "running", reader=ReaderProgress("s1", 6)))
    filler.heartbeat(Status("writer", "VIC", 1, 0, "running", {"session": "s1", "seq": 9}))
    filler.tick()
    assert reader.asked == [("VIC", "s1", 3, 5)]


def test_memory_stays_bounded_and_what_is_dropped_is_reported() -> None:
    """Past the bound on holes per stream the oldest hole is given up, with its reason."""
    reader, clock = Reader(reachable=False), Clock()
    filler = make(reader, clock, max_ranges=2)
    live(filler, [0, 2, 4, 6, 8])
    filler.tick()
    lost = filler.take_lost()
    assert [(g.first, g.last, g.reason) for g in lost] == [
        (1, 1, REASON_BOUND), (3, 3, REASON_BOUND),
    ]
    assert filler.recovering == 2
    assert filler.tracker.state("VIC", "s1").missing == ((5, 6), (7, 8))
