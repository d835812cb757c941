"""PUBLISH_INTERVAL: a reader publishes what it holds once per interval, as one message.

Readers run in-process on real sim:// ports and real sockets (tests/readerrun.py). Nothing
here asserts a speed: message counts, and the readings' own times against the message's
arrival with a generous bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq

from powmon.common.errors import SettingsError
from powmon.common.replay import ReplayClient, ReplayServer
from powmon.common.schema.readings import MAX_BATCH, decode_batch
from powmon.common.schema.replay import ReplayReply
from powmon.common.schema.status import ReaderProgress, Status
from powmon.common.settings import load_settings
from powmon.readers.conversion import Calibration, convert
from powmon.readers.counters import Counters
from powmon.readers.emitter import Batch, Emitter
from powmon.readers.numbering import Sample
from powmon.sim import protocol_sim
from tests.helpers import wait_until, write_settings
from tests.readerrun import ReaderStarter, Running

SCHEDULING_S = 0.4  # generous: a loaded 2-core CI machine may run the reader this late


def _heard(r: Running) -> int:
    r.bus.pump()
    return len(r.bus.readings)


def _readings(r: Running, n: int) -> None:
    wait_until(lambda: _heard(r) >= n, 20, what=f"{n} readings")


def _assert_whole(r: Running) -> None:
    """Every answer the device gave is a reading, in order, and the last heartbeat says so."""
    readings = r.bus.readings
    assert [x.seq for x in readings] == list(range(len(readings)))
    assert [x.raw for x in readings] == r.device.sent
    assert r.bus.statuses[-1].counters["seq"] == len(readings)


def test_at_100_hz_a_message_carries_several_readings_none_held_past_the_interval(
    start_reader: ReaderStarter,
) -> None:
    """Request/answer at 100 Hz, PUBLISH_INTERVAL 0.1: about 10 readings per message, and no
    reading reaches the bus later than the interval (plus scheduling) after it was taken."""
    r = start_reader("amps=2&noise=0.05", POLLING_DELAY=0.01, PUBLISH_INTERVAL=0.1)
    _readings(r, 100)
    r.finish()
    _assert_whole(r)
    batches = [b for b in r.bus.batches if b.readings]
    assert len(batches) * 3 < len(r.bus.readings), "readings were not gathered into messages"
    for batch, arrived in zip(r.bus.batches, r.bus.arrived, strict=True):
        if batch.readings:
            waited = (arrived - batch.readings[0].ts_ns) / 1e9
            assert waited < 0.1 + 0.01 + SCHEDULING_S, (batch.seq, waited)


def test_below_one_reading_per_interval_every_reading_is_its_own_message(
    start_reader: ReaderStarter,
) -> None:
    """4 readings a second at PUBLISH_INTERVAL 0.1 (and, by the same rule, 1 Hz): each goes at
    once, a message of one."""
    r = start_reader("amps=1", POLLING_DELAY=0.25, PUBLISH_INTERVAL=0.1)
    _readings(r, 5)
    r.finish()
    _assert_whole(r)
    assert all(len(b.readings) == 1 for b in r.bus.batches if b.readings)


def test_interval_0_publishes_each_reading_at_once(start_reader: ReaderStarter) -> None:
    """PUBLISH_INTERVAL 0 is the behaviour before it existed: one message per reading."""
    r = start_reader("amps=1", POLLING_DELAY=0.01, PUBLISH_INTERVAL=0)
    _readings(r, 30)
    r.finish()
    _assert_whole(r)
    assert all(len(b.readings) == 1 for b in r.bus.batches if b.readings)


def test_a_stream_is_published_in_batches(start_reader: ReaderStarter) -> None:
    """A 100 Hz stream, PUBLISH_INTERVAL 0.1: messages of several readings, seqs unbroken."""
    r = start_reader("amps=1", STREAM="on", POLLING_DELAY=0.01, PUBLISH_INTERVAL=0.1)
    _readings(r, 100)
    r.finish()
    readings = r.bus.readings
    assert [x.seq for x in readings] == list(range(len(readings)))
    assert len([b for b in r.bus.batches if b.readings]) * 3 < len(readings)


def test_held_readings_are_published_at_a_stop_and_heartbeats_never_name_them(
    start_reader: ReaderStarter,
) -> None:
    """PUBLISH_INTERVAL 2: the first reading goes at once, the next ones wait; meanwhile the
    heartbeats' seq counts only what was published (a sink would otherwise take the held
    ones for lost); a stop publishes them, before the last heartbeat."""
    r = start_reader("amps=1", POLLING_DELAY=0.01, PUBLISH_INTERVAL=2)
    # The bus is pumped from the start: a bound SUB sends its subscription only when its
    # owner's thread looks at it, and a PUB drops what it sends before that.
    wait_until(lambda: _heard(r) and r.name in protocol_sim.devices
               and len(r.device.sent) >= 40, 10, what="readings held")
    assert len(r.bus.readings) < len(r.device.sent)
    wait_until(lambda: r.bus.counters().get("seq") is not None, 10, what="a heartbeat")
    assert r.bus.counters()["seq"] == r.bus.readings[-1].seq + 1 < len(r.device.sent)
    r.finish()
    _assert_whole(r)


def test_replay_answers_are_the_published_rows_with_their_losses(
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """What an emitter published in batches (one of them after a device hole) comes back by
    replay as the same readings, the loss with the reading after it, from the bytes packed
    once."""
    pub = zmq_ctx.socket(zmq.PUB)
    pub.bind("inproc://published")
    sub = zmq_ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect("inproc://published")
    emitter = Emitter(pub, "VIC", Calibration(), Counters("s1", "sim://VIC"), 1000, 0.0)
    samples = [Sample(1, seq, seq * 10_000, 512 + seq % 5, 0) for seq in range(30)]
    stamps = [1_795_628_536 * 10**9 + s * 10**7 for s in range(30)]
    emitter.publish(Batch(samples[:10], stamps[:10], convert))
    emitter.publish(Batch(samples[10:], stamps[10:], convert, dropped=4))
    published = []
    while sub.poll(100):
        published += decode_batch(sub.recv_multipart()).readings
    pub.close()
    sub.close()
    assert [x.seq for x in published] == list(range(30))
    server = ReplayServer(zmq_ctx, "VIC", "s1", emitter.ring, "tcp://127.0.0.1", gate=None)
    client = ReplayClient(zmq_ctx, curve=None)
    client.learn(Status("reader", "VIC", 1, 0, "running",
                        reader=ReaderProgress("s1", 30, replay=server.endpoint)))
    assert client.ask("VIC", "s1", 5, 25)
    got: list[ReplayReply] = []

    def answered() -> bool:
        server.serve_pending()
        got.extend(client.replies())
        return bool(got)

    try:
        wait_until(answered, 10, what="the replay")
    finally:
        client.close()
        server.close()
    [reply] = got
    assert list(reply.readings) == published[5:26]
    assert reply.dropped == ((10, 4),)


@pytest.mark.parametrize(("value", "why"), [
    (-0.1, "PUBLISH_INTERVAL"), (6, "PUBLISH_INTERVAL"), ("soon", "PUBLISH_INTERVAL"),
])
def test_a_bad_publish_interval_is_refused(tmp_path: Path, value: object, why: str) -> None:
    path = write_settings(tmp_path / "s.yaml", [{"PORT": "sim://A", "SENSORS_ID": "A"}],
                          PUBLISH_INTERVAL=value)
    with pytest.raises(SettingsError, match=why):
        load_settings(path)


def test_publish_interval_is_per_sensor_and_held_below_the_stall_timeout(tmp_path: Path) -> None:
    """A sensor's own PUBLISH_INTERVAL wins over the top level; one that would make a
    reader look stalled (more than half of STALL_TIMEOUT) is refused, naming both keys."""
    sensors: list[dict[str, Any]] = [
        {"PORT": "sim://A", "SENSORS_ID": "A", "PUBLISH_INTERVAL": 0.6},
               {"PORT": "sim://B", "SENSORS_ID": "B"}]
    settings = load_settings(write_settings(tmp_path / "s.yaml", sensors, PUBLISH_INTERVAL=0.2))
    assert [s.publish_interval for s in settings.sensors] == [0.6, 0.2]
    assert load_settings(write_settings(tmp_path / "d.yaml", sensors[1:])).sensors[
        0].publish_interval == 0.1
    slow = write_settings(tmp_path / "x.yaml", sensors, STALL_TIMEOUT=1)
    with pytest.raises(SettingsError, match=r"SENSORS\[0\].PUBLISH_INTERVAL.*STALL_TIMEOUT"):
        load_settings(slow)


def test_more_than_a_batch_held_goes_out_in_messages_of_at_most_max_batch(
    zmq_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """A long read can bring more samples than one message may hold (MAX_BATCH): they go out
    in several messages every subscriber accepts, seqs unbroken, the loss named once."""
    pub = zmq_ctx.socket(zmq.PUB)
    pub.bind("inproc://big")
    sub = zmq_ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect("inproc://big")
    emitter = Emitter(pub, "VIC", Calibration(), Counters("s1", "sim://VIC"), 10_000, 60.0)
    n = 2 * MAX_BATCH + 100
    samples = [Sample(1, seq, seq * 1_000, 512, 0) for seq in range(n)]
    stamps = [1_795_628_536 * 10**9 + s * 10**6 for s in range(n)]
    emitter.publish(Batch(samples, stamps, convert, dropped=3))
    emitter.flush()
    batches = []
    while sub.poll(100):
        batches.append(decode_batch(sub.recv_multipart()))
    pub.close()
    sub.close()
    assert all(len(b.readings) <= MAX_BATCH for b in batches)
    assert [x.seq for b in batches for x in b.readings] == list(range(n))
    assert [b.dropped for b in batches] == [3, 0, 0]
