"""The sink core with a sink of its own kind: one that stores into a list (no mocks).

Whatever the writer and the uplink do alike is asserted here once: resume from what the sink
holds, gaps, replay from a real reader ring over real sockets, duplicates, the stop drain,
and the readers' last words (a stopped reader's heartbeat, a supervisor's ReaderEnd).
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
import zmq

from powmon.common.replay import ReplayClient, ReplayRing, ReplayServer
from powmon.common.schema.readings import (
    Flag,
    Measured,
    Reading,
    encode_batch,
    encode_reading,
    pack_row,
    pack_rows,
)
from powmon.common.schema.status import (
    STATE_STOPPED,
    ReaderEnd,
    ReaderProgress,
    Status,
    encode_status,
)
from powmon.common.transport import Heartbeat
from powmon.sink.api import CoreConfig, Lost, Sink, Stored, StreamState
from powmon.sink.bookkeeping import SinkCore, lost_ranges
from powmon.sink.loop import Loop
from tests.helpers import wait_until

Ctx = zmq.Context[zmq.Socket[bytes]]


class ListSink(Sink):
    """Stores into a list; says it holds what `held` says; can refuse past `room` readings."""

    def __init__(self, held: Sequence[StreamState] = (), room: int = 10**9) -> None:
        self.readings: list[Reading] = []
        self.progress: list[StreamState] = []
        self.held = list(held)
        self.room = room
        self.closed = False

    def stored(self) -> Iterable[StreamState]:
        return self.held

    def store(self, readings: Sequence[Reading], progress: Sequence[StreamState]) -> Stored:
        room = max(self.room - len(self.readings), 0)
        self.readings += readings[:room]
        self.progress += progress
        return Stored(dropped=tuple(readings[room:]))

    def counters(self) -> dict[str, object]:
        return {"stored": len(self.readings)}

    def close(self) -> None:
        self.closed = True

    def seqs(self, session: str = "s1") -> list[int]:
        return sorted(r.seq for r in self.readings if r.session == session)


def reading(seq: int, session: str = "s1") -> Reading:
    return Reading("VIC", session, seq, 10**18 + seq, 512, 0.0, 0.0, 0.0)


def msg(seq: int, session: str = "s1") -> list[bytes]:
    return encode_reading(reading(seq, session))


def beat(session: str, seq: int, endpoint: str = "", state: str = "running") -> list[bytes]:
    progress = ReaderProgress(session, seq, seq, endpoint)
    return encode_status(Status("reader", "VIC", 1, 0, state, reader=progress))


def config(tmp_path: Path, heartbeat_interval: float = 0.2) -> CoreConfig:
    return CoreConfig(
        process="list", backend="inproc://unused", frontend="inproc://unused", hwm=1000,
        heartbeat_interval=heartbeat_interval, gap_log=tmp_path / "gaps.csv", fsync=False,
    )


def gaps(tmp_path: Path) -> list[tuple[str, str, str, str]]:
    path = tmp_path / "gaps.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [(g["session"], g["first_seq"], g["last_seq"], g["reason"])
                for g in csv.DictReader(f)]


@pytest.fixture
def ring_server(zmq_ctx: Ctx) -> Iterator[ReplayServer]:
    """A reader's replay socket holding seq 0..49 of session s1."""
    ring = ReplayRing(100)
    for seq in range(50):
        ring.append(seq, pack_row(reading(seq)[3:]))
    server = ReplayServer(zmq_ctx, "VIC", "s1", ring, "tcp://127.0.0.1", gate=None)
    yield server
    server.close()


def settle(core: SinkCore, server: ReplayServer | None = None) -> None:
    def done() -> bool:
        if server is not None:
            server.serve_pending()
        core.recover()
        return core.filler.recovering == 0

    wait_until(done, timeout=20, what="holes filled or given up")


def test_readings_in_order_are_stored_once_and_duplicates_dropped(tmp_path: Path) -> None:
    """0..9, then 3 and 9 again: ten readings stored, two counted as duplicates."""
    sink = ListSink()
    core = SinkCore(config(tmp_path), sink)
    core.handle([msg(s) for s in range(10)])
    core.handle([msg(3), msg(9)])
    assert sink.seqs() == list(range(10))
    counters = core.counters()
    assert (counters["received"], counters["duplicates"], counters["stored"]) == (12, 2, 10)


def test_resume_drops_what_the_sink_holds_and_asks_for_its_holes(tmp_path: Path) -> None:
    """The sink holds 0..19 minus 5..7: after resume, 0..19 are duplicates and 5..7 wanted."""
    sink = ListSink(held=[StreamState("VIC", "s1", 19, 0, ((5, 8),))])
    core = SinkCore(config(tmp_path, heartbeat_interval=12), sink)
    core.resume()
    assert core.filler.recovering == 3
    core.handle([msg(s) for s in (4, 6, 19, 20)])
    assert sink.seqs() == [6, 20]
    assert core.counters()["duplicates"] == 2
    assert sink.progress[-1] == StreamState("VIC", "s1", 20, 0, ((5, 6), (7, 8)))


def test_resume_does_not_ask_again_for_holes_the_loss_log_names(tmp_path: Path) -> None:
    """The sink holds 0..29 minus 10..19 and 22..23, and gaps.csv already gave up 10..19 (an
    earlier run): only 22..23 are wanted, and after the grace only they are logged, once."""
    clock = [100.0]
    sink = ListSink(held=[StreamState("VIC", "s1", 29, 0, ((10, 20), (22, 24)))])
    core = SinkCore(config(tmp_path), sink, clock=lambda: clock[0])
    core.losses.add([Lost("VIC", "s1", 10, 19, "overrun"), Lost("VIC", "s0", 22, 23, "x")])
    core.resume()
    assert core.filler.recovering == 2
    clock[0] += 10
    core.recover()
    assert gaps(tmp_path) == [
        ("s1", "10", "19", "overrun"), ("s0", "22", "23", "x"), ("s1", "22", "23", "no_endpoint"),
    ]


def test_a_torn_or_foreign_loss_log_row_is_left_out_of_what_is_given_up(tmp_path: Path) -> None:
    """logged() reads whole rows of seqs only: the header, a device_dropped row (samples that
    took no seq), a cut last row and, reading a tail, a cut first row are no range."""
    tail = (
        "2026-01-01T00:00:00Z,VIC,s1,6,5,3,device_dropped\n"
        "2026-01-01T00:00:00Z,VIC,s1,9,1"
    )
    (tmp_path / "gaps.csv").write_text(
        "detected_at,sensor_id,session,first_seq,last_seq,count,reason\n"
        "2026-01-01T00:00:00Z,VIC,s1,3,4,2,overrun\n" + tail, encoding="utf-8",
    )
    core = SinkCore(config(tmp_path), ListSink())
    assert core.losses.logged() == {("VIC", "s1"): [(3, 5)]}
    assert core.losses.logged(limit=len(tail) + 12) == {}  # starts inside the overrun row


def test_a_gap_is_replayed_from_the_reader_and_flagged(
    tmp_path: Path, zmq_ctx: Ctx, ring_server: ReplayServer
) -> None:
    """Live 0..9 and 30..34, the heartbeat says 50: 10..29 and 35..49 come by replay, once,
    flagged replayed; late live copies of them are duplicates."""
    sink = ListSink()
    client = ReplayClient(zmq_ctx, curve=None)
    core = SinkCore(config(tmp_path), sink, client)
    try:
        core.handle([beat("s1", 0, ring_server.endpoint)])
        core.handle([msg(s) for s in range(10)])
        core.handle([msg(s) for s in range(30, 35)])
        core.handle([beat("s1", 50, ring_server.endpoint)])
        settle(core, ring_server)
        core.handle([msg(12), msg(40)])
    finally:
        client.close()
    assert sink.seqs() == list(range(50))
    replayed = {r.seq for r in sink.readings if r.flags & Flag.REPLAYED}
    assert replayed == {*range(10, 30), *range(35, 50)}
    counters = core.counters()
    assert (counters["replayed"], counters["duplicates"], counters["lost"]) == (35, 2, 0)
    assert gaps(tmp_path) == []


def test_a_hole_nobody_can_fill_is_named_in_the_loss_log(tmp_path: Path) -> None:
    """No replay endpoint ever heard of: after the grace the hole is lost, no_endpoint."""
    clock = [100.0]
    sink = ListSink()
    core = SinkCore(config(tmp_path), sink, clock=lambda: clock[0])
    core.handle([msg(0), msg(1), msg(5)])
    core.recover()
    clock[0] += 10
    core.recover()
    assert gaps(tmp_path) == [("s1", "2", "4", "no_endpoint")]
    assert core.counters()["lost"] == 3


def test_readings_the_sink_cannot_keep_are_named_as_lost(tmp_path: Path) -> None:
    """A sink with room for 4: the other 3 of a batch are counted and logged, buffer_full."""
    sink = ListSink(room=4)
    core = SinkCore(config(tmp_path), sink)
    core.handle([msg(s) for s in range(7)])
    core.recover()
    assert sink.seqs() == [0, 1, 2, 3]
    assert gaps(tmp_path) == [("s1", "4", "6", "buffer_full")]


def rows(first: int, n: int) -> list[Measured]:
    return [(10**18 + seq, 512, 0.0, 0.0, 0.0, 0) for seq in range(first, first + n)]


def loss_rows(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "gaps.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_batches_are_stored_like_single_readings(tmp_path: Path) -> None:
    """Version 2 messages (a streaming reader's batches) between single readings: every
    reading stored once, a batch repeated is all duplicates, nothing lost."""
    sink = ListSink()
    core = SinkCore(config(tmp_path), sink)
    batch = encode_batch("VIC", "s1", 1, rows(1, 9))
    core.handle([msg(0), batch, msg(10), batch])
    core.recover()
    assert sink.seqs() == list(range(11))
    assert (core.counters()["received"], core.counters()["duplicates"]) == (20, 9)
    assert gaps(tmp_path) == []


def test_device_samples_a_batch_names_lost_go_to_the_loss_log_once(tmp_path: Path) -> None:
    """A batch saying 7 device samples were lost before seq 5: one device_dropped row (empty
    seq range before 5, count 7); the same message again (a duplicate) adds none; a message
    with no reading that names 2 more after seq 9 adds one."""
    sink = ListSink()
    core = SinkCore(config(tmp_path), sink)
    lossy = encode_batch("VIC", "s1", 5, rows(5, 5), dropped=7)
    core.handle([encode_batch("VIC", "s1", 0, rows(0, 5)), lossy, lossy])
    core.handle([encode_batch("VIC", "s1", 10, [], dropped=2)])
    core.recover()
    assert sink.seqs() == list(range(10))
    got = [(g["first_seq"], g["last_seq"], g["count"], g["reason"]) for g in loss_rows(tmp_path)]
    assert got == [("5", "4", "7", "device_dropped"), ("10", "9", "2", "device_dropped")]
    assert core.counters()["lost"] == 9


def test_a_replayed_reading_brings_the_device_loss_named_with_it(
    tmp_path: Path, zmq_ctx: Ctx
) -> None:
    """The live batch that named a device loss was missed; replaying its first reading (a
    ring payload that names the loss too) logs the loss, once."""
    ring = ReplayRing(100)
    ring.extend(0, pack_rows(rows(0, 5)))
    ring.extend(5, pack_rows(rows(5, 5)), dropped=3)
    server = ReplayServer(zmq_ctx, "VIC", "s1", ring, "tcp://127.0.0.1", gate=None)
    sink = ListSink()
    client = ReplayClient(zmq_ctx, curve=None)
    core = SinkCore(config(tmp_path), sink, client)
    try:
        core.handle([beat("s1", 0, server.endpoint), msg(0), msg(9)])
        settle(core, server)
    finally:
        client.close()
        server.close()
    assert sink.seqs() == list(range(10))
    got = [(g["first_seq"], g["count"], g["reason"]) for g in loss_rows(tmp_path)]
    assert got == [("5", "3", "device_dropped")]


def test_a_stopped_readers_last_heartbeat_settles_its_session(tmp_path: Path) -> None:
    """Its last heartbeat says 12 were published, 0..7 arrived: 8..11 are named at stop,
    reader_stopped, and nothing more is asked of it."""
    sink = ListSink()
    core = SinkCore(config(tmp_path), sink)
    core.handle([msg(s) for s in range(8)])
    core.handle([beat("s1", 12, "", STATE_STOPPED)])
    core.filler.finish()
    core.recover()
    assert gaps(tmp_path) == [("s1", "8", "11", "reader_stopped")]
    assert core.counters()["replay_requests"] == 0


def test_a_supervisor_reports_a_dead_reader_and_its_tail_is_named(tmp_path: Path) -> None:
    """A supervisor's heartbeat says reader VIC's session s1 ended at seq 20: 10..19 (never
    arrived) are named reader_restarted; a session never seen, heard of long after this sink
    started, is a new one of which it can tell nothing, and is left alone."""
    clock = [100.0]
    sink = ListSink()
    core = SinkCore(config(tmp_path), sink, clock=lambda: clock[0])
    core.handle([msg(s) for s in range(10)])
    clock[0] += 60  # past the first moments after start
    gone = (ReaderEnd("VIC", "s1", 20), ReaderEnd("VIC", "never-seen", 500))
    core.handle([encode_status(Status("supervisor", "run", 1, 0, "running", gone=gone))])
    clock[0] += 5
    core.recover()
    assert gaps(tmp_path) == [("s1", "10", "19", "reader_restarted")]


class FindingSink(ListSink):
    """A store that holds seq 0..`last` of session `found` beyond what stored() shows."""

    def __init__(self, found: str, last: int) -> None:
        super().__init__()
        self.found, self.last = found, last

    def find(self, sensor_id: str, session: str) -> int | None:
        return self.last if session == self.found else None


def test_a_session_that_lived_and_died_while_the_sink_was_down_is_named(tmp_path: Path) -> None:
    """A sink just started hears from the supervisor of two sessions it never saw: one its
    store holds up to seq 29 (only the rest, 30..39, is named) and one born and killed while
    it was down (all of it, 0..499, is named): every seq from 0 stored or named (found by the
    10-minute chaos soak: 64 readings neither)."""
    clock = [100.0]
    core = SinkCore(config(tmp_path), FindingSink("held", 29), clock=lambda: clock[0])
    gone = (ReaderEnd("VIC", "held", 40), ReaderEnd("VIC", "unseen", 500))
    core.handle([encode_status(Status("supervisor", "run", 1, 0, "running", gone=gone))])
    clock[0] += 5
    core.recover()
    assert sorted(gaps(tmp_path)) == [("held", "30", "39", "reader_restarted"),
                                      ("unseen", "0", "499", "reader_restarted")]


def _tail_named(tmp_path: Path, clock: list[float]) -> list[bytes]:
    """A sink stores s1's 0..9 and hears the supervisor say s1 ended at 20: it names 10..19.
    Returns that supervisor heartbeat, to be heard again by a restarted sink."""
    first = SinkCore(config(tmp_path), ListSink(), clock=lambda: clock[0])
    first.handle([msg(s) for s in range(10)])
    gone = (ReaderEnd("VIC", "s1", 20),)
    ended = encode_status(Status("supervisor", "run", 1, 0, "running", gone=gone))
    first.handle([ended])
    clock[0] += 5
    first.recover()
    assert gaps(tmp_path) == [("s1", "10", "19", "reader_restarted")]
    return ended


def test_a_tail_named_before_a_restart_is_not_named_again(tmp_path: Path) -> None:
    """The supervisor lists a dead reader for minutes: a sink restarted meanwhile, holding
    rows 0..9 and a loss log naming 10..19, hears the same ReaderEnd again and names nothing
    twice (found by the 10-minute chaos soak: one range named nine times)."""
    clock = [100.0]
    ended = _tail_named(tmp_path, clock)

    again = SinkCore(config(tmp_path), ListSink([StreamState("VIC", "s1", 9, 0)]),
                     clock=lambda: clock[0])
    again.resume()
    again.handle([ended])
    clock[0] += 5
    again.recover()
    assert gaps(tmp_path) == [("s1", "10", "19", "reader_restarted")]


def test_a_tail_named_before_a_restart_is_not_named_again_when_found_by_search(
    tmp_path: Path,
) -> None:
    """As above, for a session the restarted sink did not resume (its rows are older than the
    tail it reads back) and finds only by searching its store: the loss log's range past the
    last stored row still counts (found by the 10-minute chaos soak: one range named three
    times by three writers)."""
    clock = [100.0]
    ended = _tail_named(tmp_path, clock)

    again = SinkCore(config(tmp_path), FindingSink("s1", 9), clock=lambda: clock[0])
    again.resume()
    again.handle([ended])
    clock[0] += 5
    again.recover()
    assert gaps(tmp_path) == [("s1", "10", "19", "reader_restarted")]


def test_lost_ranges_join_consecutive_seqs_per_stream() -> None:
    """Dropped readings become as few ranges as their seqs allow, per stream."""
    dropped = [reading(s) for s in (3, 4, 5, 9)] + [reading(1, "s2")]
    got = [(g.session, g.first, g.last) for g in lost_ranges(dropped, "buffer_full")]
    assert got == [("s1", 3, 5), ("s1", 9, 9), ("s2", 1, 1)]


def test_the_loop_drains_what_arrived_and_closes_the_sink(tmp_path: Path, zmq_ctx: Ctx) -> None:
    """Over a real PUB/SUB: readings sent before stop are stored; stop ends the loop, the
    drain takes what is queued, and the heartbeat keeps beating."""
    pub = zmq_ctx.socket(zmq.PUB)
    pub.bind("inproc://sink-core-loop")
    sub = zmq_ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect("inproc://sink-core-loop")
    status = zmq_ctx.socket(zmq.PUB)
    status.bind("inproc://sink-core-status")
    sink = ListSink()
    core = SinkCore(config(tmp_path), sink)
    stop = threading.Event()
    beats = Heartbeat(status, "list", "list", 0.05, core.counters)
    turns = Loop(core)
    loop = threading.Thread(target=turns.run, args=(sub, beats, stop))
    loop.start()
    try:
        for seq in range(100):
            pub.send_multipart(msg(seq))
        wait_until(lambda: len(sink.readings) == 100, timeout=10, what="stored by the loop")
        for seq in range(100, 200):
            pub.send_multipart(msg(seq))
    finally:
        stop.set()
        loop.join(10)
    turns.drain(sub)
    sink.close()
    assert sink.seqs() == list(range(200))
    assert sink.closed
    for sock in (pub, sub, status):
        sock.close()
