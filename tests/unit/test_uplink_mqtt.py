"""The MQTT output against a real Mosquitto on a loopback port: QoS 1 from the spool, a row
done only after its PUBACK, broker outages, refused credentials, TLS, independence from the
HTTP output."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from powmon.base.storage import CSV_FIELDS
from powmon.common.settings import Secret
from powmon.uplink.http_output import HttpOutput
from powmon.uplink.mqtt import MqttOutput
from tests.helpers import wait_until
from tests.httpserver import RecordingServer
from tests.outputs import Running, http_config, mqtt_config, reading
from tests.servers.mosquitto import Mosquitto, Subscriber
from tests.servers.tls import make_certs

Key = tuple[str, str, int]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    # Persistence with a save on every change: a killed broker keeps the test subscriber's
    # session and queue, so what the broker acknowledged to PowMon still reaches the test.
    mq = Mosquitto(tmp_path / "mosquitto", extra=(
        f"persistence true\npersistence_location {tmp_path / 'mosquitto'}/\n"
        "autosave_interval 1\nautosave_on_changes true\n"))
    mq.config.write_text(mq.config.read_text().replace("persistence false\n", ""))
    mq.start()
    yield mq
    mq.stop()


@pytest.fixture
def subscriber(broker: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(broker.port, "#")
    yield sub
    sub.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def go(port: int, **kw: Any) -> Running:
        running.append(Running(MqttOutput(mqtt_config(port, **kw)), tmp_path / "spool.sqlite3"))
        return running[-1]

    yield go
    for r in running:
        r.close()


def received(sub: Subscriber) -> dict[Key, list[bytes]]:
    """Every reading message by key, with each copy's payload."""
    out: dict[Key, list[bytes]] = defaultdict(list)
    for msg in sub.snapshot():
        if msg.topic.startswith("powmon/") and msg.topic.count("/") == 1:
            d = json.loads(msg.payload)
            out[(d["sensor_id"], d["session"], d["seq"])].append(bytes(msg.payload))
    return out


def keys(session: str, seqs: range) -> set[Key]:
    return {("VIC", session, seq) for seq in seqs}


def test_every_spooled_reading_is_published_with_its_key(
    broker: Mosquitto, subscriber: Subscriber, start: Callable[..., Running]
) -> None:
    """Each reading goes once to powmon/<sensor_id> as JSON with the CSV columns, QoS 1; the
    row is done for the output once the PUBACKs came."""
    run = start(broker.port)
    run.add([reading(i) for i in range(200)])
    wait_until(lambda: set(received(subscriber)) == keys("s1", range(200)), what="all 200")
    wait_until(lambda: run.depth() == 0, what="all acked")
    first = json.loads(received(subscriber)[("VIC", "s1", 0)][0])
    assert set(CSV_FIELDS) <= set(first) and first["ts_ns"] == reading(0).ts_ns
    assert first["timestamp"].endswith("Z") and first["flags"] == ""
    qos = {m.qos for m in subscriber.snapshot() if m.topic == "powmon/VIC"}
    assert qos == {1}
    assert run.stats.sent == 200 and run.stats.state == "running"


def test_broker_killed_mid_run_loses_nothing_and_duplicates_keep_their_key(
    broker: Mosquitto, subscriber: Subscriber, start: Callable[..., Running]
) -> None:
    """kill -9 of Mosquitto while readings flow: what it had not acknowledged stays spooled
    and goes again after the restart; every reading arrives, a duplicate is the same message."""
    run = start(broker.port)
    run.add([reading(i) for i in range(300)])
    broker.stop(signal.SIGKILL)
    run.add([reading(i) for i in range(300, 600)])
    wait_until(lambda: run.stats.state == "retrying" and run.depth() > 0, what="retrying")
    broker.start()
    wait_until(lambda: run.depth() == 0, 30, what="spool drained after the restart")
    wait_until(lambda: set(received(subscriber)) == keys("s1", range(600)), 30,
               what="every reading at the subscriber")
    for key, copies in received(subscriber).items():
        assert len(set(copies)) == 1, f"{key}: copies differ"


def test_readings_wait_in_the_spool_while_the_broker_is_down(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """No broker at all: nothing is lost or dead-lettered, the output says `retrying`, and
    the readings go out once a broker listens."""
    mq = Mosquitto(tmp_path / "late")
    run = start(mq.port)
    run.add([reading(i) for i in range(20)])
    wait_until(lambda: run.stats.retries >= 2, what="retries")
    assert run.depth() == 20 and run.stats.dead_lettered == 0
    assert "Connection refused" in run.stats.last_error
    mq.start()
    try:
        sub = Subscriber(mq.port, "powmon/#", client_id="late-sub")
        try:
            wait_until(lambda: run.depth() == 0, 30, what="delivered")
        finally:
            sub.close()
    finally:
        mq.stop()


def passwords(root: Path, user: str, password: str) -> Path:
    path = root / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), user, password], check=True,
                   capture_output=True)
    return path


def test_wrong_password_refuses_the_output_and_never_shows_the_credentials(
    tmp_path: Path, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that refuses the user: state `refused` with the reason, readings kept, no dead
    letters; the right password then delivers; neither password is ever logged."""
    root = tmp_path / "auth"
    root.mkdir()
    mq = Mosquitto(root, extra=f"password_file {passwords(root, 'lab', 'pa55-right')}\n")
    conf = mq.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
    mq.config.write_text(conf)
    mq.start()
    try:
        with caplog.at_level(logging.DEBUG):
            bad = start(mq.port, username="lab", password=Secret("pa55-wrong"))
            bad.add([reading(i) for i in range(5)])
            wait_until(lambda: bad.stats.state == "refused", what="refused")
            assert "refused the connection" in bad.stats.reason
            assert bad.depth() == 5 and bad.stats.dead_lettered == 0
            bad.close()
            good = start(mq.port, username="lab", password=Secret("pa55-right"),
                         client_id="powmon-test-2")
            wait_until(lambda: good.depth() == 0, what="delivered with the right password")
        text = caplog.text + repr(good.worker.output)
        assert "pa55" not in text
    finally:
        mq.stop()


def test_mqtt_down_does_not_hold_back_http_and_the_other_way_round(
    broker: Mosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    """Two outputs on one spool: with the HTTP server gone, MQTT still delivers everything
    (HTTP's rows wait); with the broker gone, HTTP still delivers; each has its own counters."""
    path = tmp_path / "spool.sqlite3"
    with RecordingServer() as server:
        server.stop_listening()
        names = ["http", "mqtt"]
        http = Running(HttpOutput(http_config(server.url)), path, names=names)
        mqtt = Running(MqttOutput(mqtt_config(broker.port)), path, names=names)
        try:
            http.add([reading(i) for i in range(50)])
            mqtt.worker.poke()
            wait_until(lambda: set(received(subscriber)) == keys("s1", range(50)),
                       what="MQTT delivered while HTTP is down")
            wait_until(lambda: mqtt.depth() == 0 and http.stats.retries >= 1, what="acked")
            assert http.depth() == 50
            server.start_listening()
            broker.stop(signal.SIGKILL)
            http.add([reading(i, session="s2") for i in range(30)])
            mqtt.worker.poke()
            wait_until(lambda: http.depth() == 0, what="HTTP delivered while MQTT is down")
            assert mqtt.depth() == 30 and http.stats.sent == 80 and mqtt.stats.sent == 50
        finally:
            http.close()
            mqtt.close()


def test_mqtts_verifies_the_broker_with_the_given_ca(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """mqtts:// with MQTT_CA_CERTS delivers; without the CA the certificate is refused (a
    retry with the TLS error, nothing lost); MQTT_TLS_INSECURE accepts it unchecked."""
    ca, cert, key = make_certs(tmp_path / "tls")
    root = tmp_path / "tls-broker"
    mq = Mosquitto(root)
    conf = mq.config.read_text().replace(f"listener {mq.port} 127.0.0.1",
                                         f"listener {mq.port} 127.0.0.1\ncertfile {cert}\n"
                                         f"keyfile {key}")
    mq.config.write_text(conf)
    mq.start()
    try:
        untrusted = start(mq.port, tls=True)
        untrusted.add([reading(i) for i in range(5)])
        wait_until(lambda: untrusted.stats.retries >= 1, what="TLS refused")
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stats.last_error
        assert untrusted.depth() == 5 and untrusted.stats.state == "retrying"
        untrusted.close()
        trusted = start(mq.port, tls=True, ca_certs=str(ca), client_id="powmon-tls")
        wait_until(lambda: trusted.depth() == 0, what="delivered over TLS")
        trusted.add([reading(i, session="s2") for i in range(3)])
        wait_until(lambda: trusted.depth() == 0, what="more over TLS")
        trusted.close()
        insecure = start(mq.port, tls=True, tls_insecure=True, client_id="powmon-insecure")
        insecure.add([reading(i, session="s3") for i in range(3)])
        wait_until(lambda: insecure.depth() == 0, what="delivered unchecked")
    finally:
        mq.stop()
