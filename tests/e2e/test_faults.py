"""Fault injection on the real pipeline: kill -9 the writer, the broker, the uplink; no reading
is lost or doubled. And a replay buffer overrun on purpose: exactly the overrun range is named
in gaps.csv, nothing else is missing.

The outages themselves are waits (that is the fault being simulated); everything after them is
synchronised on outcomes (rows on disk, requests at the server, heartbeats) with wait_until.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq

from powmon.common.schema.status import decode_status
from tests.helpers import (
    Key,
    Proc,
    data_keys,
    data_rows,
    lost_rows,
    pids_running,
    published,
    python_module,
    wait_until,
    write_settings,
)
from tests.httpserver import RecordingServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc"),
]

# The outage after each kill -9 before the test looks for the restarted process: readings go
# on meanwhile (50 a sensor), so the restarted one has a hole to replay whenever it comes back.
OUTAGE_S = 1.0

SENSORS = [{"PORT": f"sim://F{i}?amps={i + 1}&noise=0.01", "SENSORS_ID": f"S{i}"} for i in range(4)]


def kill9(settings: Path, module: str) -> int:
    [pid] = wait_until(lambda: pids_running(settings, module), timeout=20, what=f"{module} running")
    os.kill(pid, signal.SIGKILL)
    return pid


def respawned(settings: Path, module: str, old: int) -> None:
    wait_until(lambda: [p for p in pids_running(settings, module) if p != old], timeout=20,
               what=f"{module} restarted")


def by_stream(found: list[Key]) -> dict[tuple[str, str], list[int]]:
    streams: dict[tuple[str, str], list[int]] = defaultdict(list)
    for sensor, session, seq in found:
        streams[(sensor, session)].append(seq)
    return streams


def complete(found: list[Key]) -> bool:
    """Every stream holds 0..max, each seq once."""
    return all(sorted(s) == list(range(max(s) + 1)) for s in by_stream(found).values())


def server_items(server: RecordingServer) -> list[dict[str, Any]]:
    return [item for req in server.delivered() for item in json.loads(req.body)]


def server_keys(server: RecordingServer) -> list[Key]:
    return [(item["sensor_id"], item["session"], item["seq"]) for item in server_items(server)]


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as srv:
        yield srv


def start_run(spawn: Callable[..., Proc], settings: Path, name: str) -> Proc:
    return spawn([sys.executable, "-m", "powmon", "run", "--config", str(settings)], name)


def test_kill_9_of_writer_broker_and_uplink_loses_and_doubles_nothing(
    tmp_path: Path, spawn: Callable[..., Proc], server: RecordingServer
) -> None:
    """After kill -9 of writer, broker and uplink, and a full restart, the CSV holds every seq
    of every session exactly once, the server has every reading, and gaps.csv is empty."""
    settings = write_settings(
        tmp_path / "settings.yaml", SENSORS, POLLING_DELAY=0.02, REMOTE_SAVE=True,
        UPLINK_URL=server.url, UPLINK_FORMAT="json", UPLINK_BATCH_WAIT=0.2,
        RESTART_BACKOFF_MAX=1.0,
    )
    data = tmp_path / "data"
    run = start_run(spawn, settings, "run1")
    wait_until(lambda: len(by_stream(data_keys(data))) == 4, timeout=30, what="rows of 4 sensors")
    wait_until(server.delivered, timeout=30, what="first upload")
    for module in ("powmon.writer", "powmon.broker", "powmon.uplink"):
        old = kill9(settings, module)
        time.sleep(OUTAGE_S)  # the outage itself (the supervisor restarts it meanwhile)
        respawned(settings, module, old)
    # Outcome: holes the faults opened get filled; the server catches up with the CSV.
    wait_until(lambda: complete(data_keys(data)), timeout=30, what="CSV without holes")
    upto = set(data_keys(data))
    wait_until(lambda: upto <= set(server_keys(server)), timeout=30, what="server caught up")
    assert run.stop(signal.SIGTERM) == 0
    first_run = published(run.output())
    sessions_before = set(by_stream(data_keys(data)))
    run2 = start_run(spawn, settings, "run2")
    wait_until(lambda: len(set(by_stream(data_keys(data))) - sessions_before) == 4, timeout=30,
               what="rows of 4 new sessions")
    assert run2.stop(signal.SIGTERM) == 0
    # Whatever was still spooled goes out with a standalone uplink.
    stored = data_keys(data)
    uplink = spawn(python_module("powmon.uplink", "--config", str(settings)), "uplink-flush")
    wait_until(lambda: "uplink up" in uplink.output(), timeout=30, what="standalone uplink up")
    wait_until(lambda: set(stored) <= set(server_keys(server)), timeout=30, what="spool flushed")
    assert uplink.stop(signal.SIGTERM) == 0

    streams = by_stream(stored)
    assert len(streams) == 8
    assert Counter(stored).most_common(1)[0][1] == 1, "a reading was stored twice"
    for stream, seqs in streams.items():
        assert sorted(seqs) == list(range(max(seqs) + 1)), f"{stream}: holes"
    counts = Counter(k[:2] for k in stored)
    old_sessions = {stream[0]: n for stream, n in counts.items() if stream in sessions_before}
    assert old_sessions == first_run, "the first run's sessions end where their readers stopped"
    assert lost_rows(data) == []
    uploaded = server_keys(server)
    assert set(uploaded) == set(stored), "server (deduplicated by key) == CSV"
    assert any("replayed" in r["flags"] for r in data_rows(data)), "the writer replayed holes"
    assert any("replayed" in i["flags"] for i in server_items(server)), "so did the uplink"


def _reader_seq(sub: zmq.Socket[bytes], last: dict[str, Any]) -> int:
    while sub.poll(20):
        status = decode_status(sub.recv_multipart())
        last.update(status.counters)
    return int(last.get("seq", -1))


def test_a_replay_buffer_overrun_is_named_exactly_in_gaps_csv(
    tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """With a 50-reading buffer and the writer down for 200 readings, gaps.csv names exactly
    the overrun range (reason overrun); every other seq is stored once."""
    settings = write_settings(
        tmp_path / "settings.yaml", [{"PORT": "sim://OV?amps=1", "SENSORS_ID": "OV"}],
        POLLING_DELAY=0.02, REPLAY_BUFFER=50,
    )
    conf = yaml.safe_load(settings.read_text(encoding="utf-8"))
    data = tmp_path / "data"
    broker(settings)
    writer_argv = python_module("powmon.writer", "--config", str(settings))
    writer = spawn(writer_argv, "writer")
    reader = spawn(python_module("powmon.readers", "--config", str(settings), "--sensor-id",
                                 "OV"), "reader")
    sub = zmq_ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"status/reader/OV/")
        sub.connect(conf["BROKER_BACKEND"])
        _overrun(sub, spawn, writer, reader, writer_argv, data)
    finally:
        sub.close()


def _overrun(sub: zmq.Socket[bytes], spawn: Callable[..., Proc], writer: Proc, reader: Proc,
             writer_argv: list[str], data: Path) -> None:
    wait_until(lambda: len(data_keys(data)) >= 20, timeout=30, what="first rows")
    writer.popen.send_signal(signal.SIGKILL)
    writer.popen.wait(10)
    stored_before = data_keys(data)
    top = max(seq for _, _, seq in stored_before)
    status: dict[str, Any] = {}
    wait_until(lambda: _reader_seq(sub, status) >= top + 200, timeout=30,
               what="200 readings published while the writer is down")
    spawn(writer_argv, "writer2")
    wait_until(lambda: lost_rows(data), timeout=30, what="the overrun in gaps.csv")
    wait_until(lambda: _reader_seq(sub, status) > top + 400, timeout=30, what="more readings")
    assert reader.stop(signal.SIGTERM) == 0
    [session] = {s for _, s, _ in stored_before}

    def accounted() -> bool:
        seqs = [seq for _, _, seq in data_keys(data)]
        gone = {s for g in lost_rows(data) for s in range(int(g["first_seq"]),
                                                            int(g["last_seq"]) + 1)}
        return sorted(seqs + list(gone)) == list(range(_reader_seq(sub, status)))

    wait_until(accounted, timeout=30, what="every published seq stored or named as lost")
    [gap] = lost_rows(data)
    assert (gap["sensor_id"], gap["session"], gap["reason"]) == ("OV", session, "overrun")
    first, last = int(gap["first_seq"]), int(gap["last_seq"])
    assert first == top + 1, "the loss starts right after the last row stored before the kill"
    assert int(gap["count"]) == last - first + 1 >= 100
    found = data_keys(data)
    assert len(found) == len(set(found)), "nothing stored twice"
    replayed = [int(r["seq"]) for r in data_rows(data) if "replayed" in r["flags"]]
    after_kill = [seq for seq in replayed if seq > top]  # below: a slow-joiner start, maybe
    assert after_kill and min(after_kill) == last + 1, "replay resumes right after the loss"
