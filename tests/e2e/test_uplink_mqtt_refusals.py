"""What the MQTT output cannot send, and a broker that will not have it: real broker and uplink
processes, a real Mosquitto on a loopback port, the test publishing readings on the bus.

- A reading whose topic would carry `+`, `#` or NUL is dead-lettered (the spool's
  `dead_letter` table, output `mqtt`, with the reason) and never published, while the other
  readings of the same batches are. A sensor id cannot carry NUL (the bus refuses control
  characters in ids, common/schema/readings.py), a session can: with `MQTT_TOPIC:
  powmon/{sensor_id}/{session}` that is how a NUL reaches a topic.
- A client id the broker refuses (`clientid_prefixes` in mosquitto.conf: CONNACK "not
  authorised") puts the output in state `refused` with the broker's reason in the heartbeat
  and one ERROR in the log, nothing dead-lettered, readings kept; once the broker admits the
  id (its config reloaded), the kept readings arrive.
"""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.helpers import Proc, wait_until
from tests.servers.mosquitto import Mosquitto, Subscriber
from tests.uplinkrun import UplinkRun

pytestmark = pytest.mark.e2e

Key = tuple[str, str, int]
ALLOWED: str = "allowed-"  # the client id prefix the restricted broker admits
REFUSED_ID: str = "powmon-refused"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    mq = Mosquitto(tmp_path / "mosquitto")
    mq.start()
    yield mq
    mq.stop()


@pytest.fixture
def restricted(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto that admits only client ids starting with ALLOWED."""
    mq = Mosquitto(tmp_path / "mosquitto", extra=f"clientid_prefixes {ALLOWED}\n")
    mq.start()
    yield mq
    mq.stop()


Start = Callable[..., UplinkRun]


@pytest.fixture
def start(tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
          zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Start]:
    """Broker + uplink sending to a Mosquitto; the test's bus sockets closed at teardown."""
    runs: list[UplinkRun] = []

    def go(mq: Mosquitto, **overrides: Any) -> UplinkRun:
        runs.append(UplinkRun(tmp_path, spawn, broker, zmq_ctx, MQTT_URL=mq.url,
                              UPLINK_BACKOFF_MAX=0.2, **overrides))
        return runs[-1]

    yield go
    for run in runs:
        run.pub.close()
        run.status_sub.close()


def readings(sub: Subscriber) -> dict[Key, str]:
    """Every reading the subscriber got: its key -> the topic it came on (not the
    availability messages, `online`/`offline`, that share the first topic level)."""
    out: dict[Key, str] = {}
    for msg in sub.snapshot():
        if msg.topic.startswith("powmon/") and msg.payload.startswith(b"{"):
            d = json.loads(msg.payload)
            out[(d["sensor_id"], d["session"], d["seq"])] = msg.topic
    return out


def mqtt(counters: dict[str, Any]) -> dict[str, Any]:
    found = counters.get("output_mqtt")
    return found if isinstance(found, dict) else {}


def publish_until(run: UplinkRun, session: str, done: Callable[[], object], what: str) -> None:
    """Publish one reading of `session` per poll until `done()`: the uplink subscribes through
    the broker, so the first readings may go before it listens."""
    seqs = itertools.count()

    def step() -> object:
        run.publish(session, [next(seqs)])
        return done()

    wait_until(step, 30, interval=0.05, what=what)


def dead_letters(spool: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(spool)) as db:
        return db.execute(
            "SELECT sensor_id, session, seq, output, status, reason FROM dead_letter"
        ).fetchall()


def test_wildcard_and_nul_topics_are_dead_lettered_and_the_rest_published(
    start: Start, mosquitto: Mosquitto) -> None:
    """Readings of `a+b`, `c#d` and a session with NUL, published between good ones: those
    are in dead_letter (output mqtt, the reason), nothing came on a topic with `+`, `#` or
    NUL, and every good reading, before and after, was published."""
    sub = Subscriber(mosquitto.port, "#")
    try:
        run = start(mosquitto, MQTT_TOPIC="powmon/{sensor_id}/{session}")
        publish_until(run, "warmup", lambda: readings(sub), "a first reading over MQTT")
        bad = {(s, sess, seq) for s, sess in (("a+b", "s1"), ("c#d", "s1"), ("VIC", "n\x00l"))
               for seq in range(3)}
        for sensor, session in {(s, sess) for s, sess, _ in bad}:
            run.publish(session, range(3), sensor=sensor)
        run.publish("after", range(5))
        good = {("VIC", "after", seq) for seq in range(5)}
        wait_until(lambda: good <= readings(sub).keys(), 20, what="the good readings")
        run.wait_status(lambda c: mqtt(c).get("dead_lettered") == len(bad), "9 dead letters")
        dead = dead_letters(run.spool_path)
        assert {row[:3] for row in dead} == bad
        assert {row[3:5] for row in dead} == {("mqtt", None)}
        assert all("would contain a wildcard or NUL" in row[5] for row in dead)
        got = readings(sub)
        assert not bad & got.keys()
        assert not [m.topic for m in sub.snapshot() if set(m.topic) & {"+", "#", "\x00"}]
        assert got[("VIC", "after", 0)] == "powmon/VIC/after"
        run.wait_status(lambda c: c["spool_depth"] == 0, "nothing left to send")
        assert run.uplink.stop() == 0
        assert "moved to dead letter: MQTT topic" in run.uplink.output()
    finally:
        sub.close()


def test_a_refused_client_id_is_reported_and_its_readings_kept(
    start: Start, restricted: Mosquitto) -> None:
    """The broker refuses the client id: state `refused` with its reason, one ERROR however
    often the output tries again, readings kept, nothing dead-lettered; once the broker's
    config admits the id (SIGHUP reload), the kept readings arrive."""
    sub = Subscriber(restricted.port, "powmon/#", client_id=ALLOWED + "sub")
    try:
        run = start(restricted, MQTT_CLIENT_ID=REFUSED_ID)
        publish_until(run, "kept", lambda: mqtt(run.status()).get("state") == "refused",
                      "the output refused")
        out = mqtt(run.status())
        assert "refused the connection" in out["reason"] and "authori" in out["reason"]
        assert restricted.url.removeprefix("mqtt://") in out["reason"]
        wait_until(lambda: refusals(restricted) >= 3, 20, what="three refused connects")
        status = run.wait_status(lambda c: mqtt(c)["spool_depth"] == c["received"] >= 1,
                                 "every reading received kept in the spool")
        assert mqtt(status)["state"] == "refused" and mqtt(status)["dead_lettered"] == 0
        log = run.uplink.output()
        assert log.count("refused this output") == 1, log
        assert not sub.snapshot()
        # Admit every client id: the next attempt connects and the kept readings go out.
        restricted.config.write_text(
            restricted.config.read_text().replace(f"clientid_prefixes {ALLOWED}\n", ""))
        assert restricted.proc is not None
        restricted.proc.popen.send_signal(signal.SIGHUP)
        kept = status["received"]
        wait_until(lambda: len([k for k in readings(sub) if k[1] == "kept"]) >= kept, 30,
                   what="the kept readings, once the id is admitted")
        run.wait_status(lambda c: mqtt(c)["state"] == "running", "running again")
        assert run.uplink.stop() == 0
    finally:
        sub.close()


def test_a_refused_client_id_is_reported_while_nothing_is_pending(
    start: Start, restricted: Mosquitto) -> None:
    """No reading yet: the output keeps its connection up while idle, and a broker that
    refuses the client id is reported all the same (state `refused`, the reason, an ERROR),
    not retried in silence."""
    run = start(restricted, MQTT_CLIENT_ID=REFUSED_ID)
    wait_until(lambda: refusals(restricted) >= 2, 20, what="two refused connects")
    run.wait_status(lambda c: mqtt(c).get("state") == "refused", "the output refused", 10)
    assert run.uplink.stop() == 0
    assert run.uplink.output().count("refused this output") == 1


def refusals(mq: Mosquitto) -> int:
    """How often the broker refused a connection as not authorised (from its log, which
    names the client `<unknown>`: the test's subscriber is admitted, so they are PowMon's)."""
    assert mq.proc is not None
    return mq.proc.output().count("disconnected, not authorised.")
