"""The writer's rollups through a kill -9: a real powmon-writer behind a real broker stores
five minutes of readings, is killed with SIGKILL while minutes are still in memory only, and
restarted; after more readings and a SIGTERM the rollups are whole (every minute of the raw
data, once) and equal a recomputation from the raw rows."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from powmon.base.rollups import read_rollups
from powmon.common.schema.readings import Measured, encode_batch
from tests.e2e.test_writer_e2e import SENSORS, Bus, Ctx
from tests.helpers import Proc, python_module, wait_until, write_settings
from tests.rollupcheck import assert_rollups_equal_raw

pytestmark = pytest.mark.e2e

T0_NS = 1_795_628_536 * 10**9 + 123_456_000
STEP = 10**8  # 0.1 s, POLLING_DELAY
PER = 10  # readings per message, as a reader's PUBLISH_INTERVAL of 0.1 s at 100 Hz sends


def send(bus: Bus, seqs: range) -> None:
    for lo in range(seqs.start, seqs.stop, PER):
        rows: list[Measured] = [
            (T0_NS + q * STEP, 512.0, 2.5, 1.5 + (q % 50) / 25, 18.0 + (q % 50) * 0.8, 0)
            for q in range(lo, min(lo + PER, seqs.stop))
        ]
        bus.send(encode_batch("VIC", "e2e", lo, rows))


def test_rollups_are_whole_after_a_sigkill_and_equal_the_raw_rows(
    tmp_path: Path, zmq_ctx: Ctx, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
) -> None:
    settings = write_settings(tmp_path / "settings.yaml", SENSORS, POLLING_DELAY=0.1,
                              FLUSH_INTERVAL=0.1)
    broker(settings)
    bus = Bus(zmq_ctx, settings)
    root = tmp_path / "data"
    try:
        writer = spawn(python_module("powmon.writer", "--config", str(settings)), "writer")
        bus.wait_subscription(b"\x01reading/", "the writer's subscription")
        send(bus, range(3000))  # five minutes of data time
        counters = bus.wait_counters("all rows stored", rows=3000)
        wait_until(lambda: bus.heartbeat().get("rollup_rows", 0) >= 3, timeout=30,
                   what=f"complete minutes rolled up, last {counters}")
        before = len(read_rollups(root, None, 0, 1 << 62))
        writer.popen.send_signal(signal.SIGKILL)
        writer.popen.wait(15)
        writer.stop()
        bus.wait_subscription(b"\x00reading/", "the killed writer's unsubscription")
        again = spawn(python_module("powmon.writer", "--config", str(settings)), "writer")
        bus.wait_subscription(b"\x01reading/", "the restarted writer's subscription")
        send(bus, range(3000, 3600))
        bus.wait_counters("rows after the restart", rows=600)
        assert again.stop(signal.SIGTERM) == 0, again.output()
        stored = assert_rollups_equal_raw(root, {"VIC": 0.1})
        assert len(stored) > before
        assert sum(r.readings for r in stored) == 3600
        assert "rollups resumed from" in again.output()
    finally:
        for sock in bus.sockets:
            sock.close(linger=0)

