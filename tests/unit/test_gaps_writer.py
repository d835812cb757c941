"""The writer fills holes from a real replay socket, stores each reading once, logs the rest."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from powmon.common.replay import ReplayClient, ReplayRing, ReplayServer
from powmon.common.schema.readings import Reading, encode_reading, pack_row
from powmon.common.schema.status import Status, encode_status
from powmon.writer.writer import WriterConfig
from tests.helpers import wait_until
from tests.writers import Writer, make_writer

Ctx = zmq.Context[zmq.Socket[bytes]]


def msg(seq: int, session: str = "s1") -> list[bytes]:
    return encode_reading(Reading("VIC", session, seq, 10**18 + seq, 512, 0.0, 0.0, 0.0))


def heartbeat(session: str, seq: int, endpoint: str) -> list[bytes]:
    counters = {"session": session, "seq": seq, "replay": endpoint}
    return encode_status(Status("reader", "VIC", 1, 0, "running", counters))


def stored(root: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(root.glob("data-*.csv")):
        rows += csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    return rows


@pytest.fixture
def rig(tmp_path: Path, zmq_ctx: Ctx) -> Iterator[tuple[Writer, ReplayServer]]:
    """A writer with a replay client, and a reader's replay server holding seq 0..29 of s1."""
    ring = ReplayRing(100)
    for seq in range(30):
        ring.append(seq, pack_row((10**18 + seq, 512, 0.0, 0.0, 0.0, 0)))
    server = ReplayServer(zmq_ctx, "VIC", "s1", ring, "tcp://127.0.0.1", gate=None)
    config = WriterConfig(
        data_root=tmp_path, data_file="data.csv", file_size_limit=10_000_000,
        flush_interval=0.1, sync_write=False, backend="tcp://127.0.0.1:1",
        frontend="tcp://127.0.0.1:2", hwm=1000, heartbeat_interval=0.2,
    )
    client = ReplayClient(zmq_ctx, curve=None)
    writer = make_writer(config, client=client)
    yield writer, server
    writer.csv.files.close()
    client.close()
    server.close()


def settle(writer: Writer, server: ReplayServer) -> None:
    def done() -> bool:
        server.serve_pending()
        writer.core.recover()
        return writer.core.filler.recovering == 0

    wait_until(done, timeout=20, what="holes filled or given up")
    assert writer.csv.flush(0.0)


def test_a_hole_is_filled_from_the_reader_once_and_flagged(
    rig: tuple[Writer, ReplayServer], tmp_path: Path
) -> None:
    """Live 0..9 and 20..24, the heartbeat says 30: 10..19 and 25..29 come by replay, once."""
    writer, server = rig
    writer.core.handle([msg(s) for s in range(10)])
    writer.core.handle([heartbeat("s1", 10, server.endpoint)])
    writer.core.handle([msg(s) for s in range(20, 25)])
    writer.core.handle([heartbeat("s1", 30, server.endpoint)])
    settle(writer, server)
    writer.core.handle([msg(15), msg(27)])  # late live copies of replayed readings
    assert writer.csv.flush(0.0)
    rows = stored(tmp_path)
    assert sorted(int(r["seq"]) for r in rows) == list(range(30))
    replayed = {int(r["seq"]) for r in rows if r["flags"] == "replayed"}
    assert replayed == {*range(10, 20), *range(25, 30)}
    counters = writer.core.counters()
    assert (counters["replayed"], counters["duplicates"], counters["lost"]) == (15, 2, 0)
    assert not (tmp_path / "gaps.csv").exists()


def test_a_session_the_reader_no_longer_runs_is_logged_as_lost(
    rig: tuple[Writer, ReplayServer], tmp_path: Path
) -> None:
    """A hole in an old session (the reader restarted) is named in gaps.csv, exactly."""
    writer, server = rig
    writer.core.handle([heartbeat("s1", 0, server.endpoint)])  # learn where VIC's reader listens
    writer.core.handle([msg(0, "old"), msg(1, "old"), msg(7, "old")])
    settle(writer, server)
    with (tmp_path / "gaps.csv").open(newline="", encoding="utf-8") as f:
        [gap] = list(csv.DictReader(f))
    assert (gap["sensor_id"], gap["session"], gap["first_seq"], gap["last_seq"], gap["count"],
            gap["reason"]) == ("VIC", "old", "2", "6", "5", "reader_restarted")
    assert writer.core.counters()["lost"] == 5
    assert writer.core.counters()["lost_ranges"] == 1
