"""The influx format into a real InfluxDB 1.x (`influxd`, started here on loopback ports)
through a real broker and uplink process: the points queried back are the readings sent, an
outage of influxd delays but loses nothing, and a real partial write dead-letters exactly
the points InfluxDB refused."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import zmq

from powmon.base.text import flag_names
from powmon.common.schema.readings import Reading
from tests.helpers import Proc, wait_until
from tests.servers.influxd import Influxd
from tests.uplinkrun import UplinkRun

pytestmark = pytest.mark.e2e
DB = "powmon"
WEEK_2001_NS = 978_307_200_000_000_000  # 2001-01-01: a shard of its own, far from now


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Influxd]:
    server = Influxd(tmp_path / "influxd")
    server.start()
    server.create_database(DB)
    yield server
    server.stop()


@pytest.fixture
def run(tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
        zmq_ctx: zmq.Context[zmq.Socket[bytes]], influxd: Influxd) -> UplinkRun:
    return UplinkRun(
        tmp_path, spawn, broker, zmq_ctx, REMOTE_SAVE=True, UPLINK_FORMAT="influx",
        UPLINK_URL=influxd.url, INFLUX_DATABASE=DB, UPLINK_BATCH_SIZE=100,
        UPLINK_BATCH_WAIT=0.1, UPLINK_TIMEOUT=2.0, UPLINK_BACKOFF_MAX=0.5,
    )


def as_point(r: Reading) -> dict[str, Any]:
    """A reading as InfluxDB 1.x gives it back (SELECT *, epoch=ns)."""
    return {"time": r.ts_ns, "sensor_id": r.sensor_id, "session": r.session, "seq": r.seq,
            "raw": r.raw, "volts": r.volts, "amps": r.amps, "watts": r.watts,
            "flags": flag_names(r.flags)}


def stored(influxd: Influxd) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(p["sensor_id"], p["session"], p["seq"]): p for p in influxd.points(DB, "power")}


def warm_up(run: UplinkRun, influxd: Influxd) -> None:
    """Publish until the uplink (subscribed through the broker) delivers one reading."""
    seqs = iter(range(10**6))

    def arrived() -> bool:
        run.publish("warmup", [next(seqs)])
        return any(k[1] == "warmup" for k in stored(influxd))

    wait_until(arrived, 30, interval=0.1, what="a first point in InfluxDB")


def test_points_equal_the_readings_and_an_outage_loses_nothing(
    run: UplinkRun, influxd: Influxd
) -> None:
    """200 readings, then influxd stopped while 200 more are published, then started again:
    the 400 points InfluxDB holds are exactly the 400 readings, field for field."""
    warm_up(run, influxd)
    sent = run.publish("s1", range(200))
    wait_until(lambda: len([k for k in stored(influxd) if k[1] == "s1"]) == 200, 30,
               what="200 points")
    influxd.stop(signal.SIGKILL)
    sent += run.publish("s1", range(200, 400))
    before = run.status().get("retries", 0)
    run.wait_status(lambda c: c["retries"] >= before + 3 and c["output_http"]["spool_depth"] >= 1,
                    "retrying while influxd is down")
    influxd.start()
    wait_until(lambda: len([k for k in stored(influxd) if k[1] == "s1"]) == 400, 60,
               what="400 points after the outage")
    points = stored(influxd)
    for r in sent:
        assert points[r.key] == as_point(r), r.key
    run.wait_status(lambda c: c["output_http"]["spool_depth"] == 0, "spool drained")
    assert run.uplink.stop() == 0


def test_a_real_partial_write_dead_letters_only_the_refused_points(
    run: UplinkRun, influxd: Influxd
) -> None:
    """A field type conflict in one shard (seq stored there as a float before): InfluxDB 1.x
    answers 400 'partial write ... dropped=N' naming no line; PowMon halves its way to exactly
    the refused readings, dead-letters them with InfluxDB's reason, and stores the rest."""
    conflict = f"power,sensor_id=OLD,session=x seq=1.5 {WEEK_2001_NS}\n"
    resp = requests.post(f"{influxd.url}/write", params={"db": DB, "precision": "ns"},
                         data=conflict.encode(), timeout=10)
    assert resp.status_code == 204
    warm_up(run, influxd)
    old = {5, 6, 23}
    sent = run.publish("mix", range(40), ts_ns=lambda seq: WEEK_2001_NS + seq if seq in old
                       else 1_700_000_000_000_000_000 + seq)
    counters = run.wait_status(lambda c: c["output_http"]["dead_lettered"] == len(old)
                               and c["output_http"]["spool_depth"] == 0, "3 dead, rest stored")
    points = stored(influxd)
    assert {k for k in points if k[1] == "mix"} == {r.key for r in sent if r.seq not in old}
    assert "field type conflict" in counters["output_http"]["last_error"]
    assert counters["output_http"]["state"] == "running"
