"""Home Assistant over MQTT against a real Mosquitto: discovery configs that the energy
dashboard accepts, throttled state from the on_readings hook, energy and availability from
the on_status hook (the writer's heartbeats), offline on stop and after a broker restart."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from powmon.common.schema.readings import Reading
from powmon.common.schema.status import Status
from powmon.uplink.homeassistant import availability_topic, energy_topic, state_topic
from powmon.uplink.mqtt import MqttOutput
from powmon.uplink.mqtt_config import MqttConfig
from tests.helpers import wait_until
from tests.outputs import Running, mqtt_config
from tests.servers.mosquitto import Mosquitto, Subscriber

REQUIRED = {"unique_id", "state_topic", "device_class", "state_class", "unit_of_measurement",
            "availability_topic", "device", "name"}
EXPECTED = {  # kind -> (device_class, state_class, unit): what the energy dashboard needs
    "current": ("current", "measurement", "A"),
    "power": ("power", "measurement", "W"),
    "energy": ("energy", "total_increasing", "Wh"),
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mq = Mosquitto(tmp_path / "mosquitto")
    mq.start()
    yield mq
    mq.stop()


@pytest.fixture
def output(broker: Mosquitto, tmp_path: Path) -> Iterator[tuple[MqttOutput, MqttConfig]]:
    cfg = mqtt_config(broker.port, sensors=("VIC", "Lab 2"), state_interval=5.0)
    out = MqttOutput(cfg)
    run = Running(out, tmp_path / "spool.sqlite3")
    yield out, cfg
    run.close()


def writer_beat(state: str = "running", energy: dict[str, Any] | None = None) -> Status:
    counters = {"energy_wh": energy} if energy is not None else {}
    return Status("writer", "writer", 1, time.time_ns(), state, counters)


def configs(sub: Subscriber, retained: bool = False) -> dict[str, dict[str, Any]]:
    """Discovery configs received (only those delivered as retained messages, if asked)."""
    return {m.topic: json.loads(m.payload) for m in sub.snapshot()
            if m.topic.startswith("homeassistant/") and (m.retain or not retained)}


def payload(sub: Subscriber, topic: str) -> str | None:
    msg = sub.latest(topic)
    return None if msg is None else msg.payload.decode()


def test_discovery_configs_carry_what_the_energy_dashboard_needs(
    broker: Mosquitto, output: tuple[MqttOutput, MqttConfig]
) -> None:
    """Each configured sensor is one device with current, power and energy entities, sent
    retained (a client that subscribes later still gets them), with unique ids."""
    _, cfg = output
    first = Subscriber(broker.port, "homeassistant/#", client_id="ha")
    try:
        wait_until(lambda: len(configs(first)) == 6, what="3 configs per sensor")
    finally:
        first.close()
    sub = Subscriber(broker.port, "homeassistant/#", client_id="ha-later")
    try:
        wait_until(lambda: len(configs(sub, retained=True)) == 6, what="retained configs")
        found = configs(sub)
    finally:
        sub.close()
    assert len({c["unique_id"] for c in found.values()}) == 6
    for sensor in ("VIC", "Lab 2"):
        mine = [c for c in found.values() if c["device"]["name"] == f"PowMon {sensor}"]
        assert len({json.dumps(c["device"], sort_keys=True) for c in mine}) == 1
        by_class = {c["device_class"]: c for c in mine}
        for kind, (device_class, state_class, unit) in EXPECTED.items():
            c = by_class[device_class]
            assert set(c) >= REQUIRED, kind
            assert (c["state_class"], c["unit_of_measurement"]) == (state_class, unit)
            assert c["availability_topic"] == availability_topic(cfg)
            assert c["device"]["identifiers"]
        assert by_class["energy"]["state_topic"] == energy_topic(cfg, sensor)
        assert by_class["current"]["state_topic"] == state_topic(cfg, sensor)
        assert by_class["current"]["value_template"] == "{{ value_json.amps }}"
    for topic in found:
        assert topic.startswith(f"homeassistant/sensor/{cfg.node}/") and " " not in topic


def test_state_is_throttled_to_the_latest_reading_and_energy_comes_from_the_writer(
    broker: Mosquitto, output: tuple[MqttOutput, MqttConfig]
) -> None:
    """300 readings fed through on_readings give a state message or two, not 300, carrying
    the newest reading; the writer's energy_wh total arrives on the energy topic."""
    out, cfg = output
    sub = Subscriber(broker.port, f"{cfg.status_base}/#", client_id="ha-state")
    try:
        batch = [Reading("VIC", "s1", i, 10**18 + i, 512.0, 0.1, i / 10, i / 2) for i in range(300)]
        for i in range(0, 300, 50):
            out.on_readings(batch[i : i + 50])
        topic = state_topic(cfg, "VIC")
        wait_until(lambda: sub.latest(topic) is not None, what="a state message")
        states = [json.loads(m.payload) for m in sub.snapshot() if m.topic == topic]
        assert 1 <= len(states) <= 2 < len(batch)
        out.on_status(writer_beat(energy={"VIC": 1234.5, "Lab 2": 7}))
        wait_until(lambda: payload(sub, energy_topic(cfg, "VIC")) == "1234.5", what="energy")
        wait_until(lambda: payload(sub, energy_topic(cfg, "Lab 2")) == "7.0", what="energy 2")
        wait_until(lambda: json.loads(sub.latest(topic).payload)["seq"] == 299,  # type: ignore[union-attr]
                   20, what="the newest reading in the state")
        latest = json.loads(sub.latest(topic).payload)  # type: ignore[union-attr]
        assert (latest["amps"], latest["watts"], latest["session"]) == (29.9, 149.5, "s1")
    finally:
        sub.close()


def test_availability_follows_the_writers_heartbeats_and_goes_offline_on_stop(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """offline until a writer heartbeat, online with it, offline when heartbeats stop (3
    intervals) or say stopping, and offline when the output stops."""
    cfg = mqtt_config(broker.port, heartbeat_interval=0.2)
    out = MqttOutput(cfg)
    run = Running(out, tmp_path / "spool.sqlite3")
    sub = Subscriber(broker.port, availability_topic(cfg), client_id="ha-avail")
    topic = availability_topic(cfg)
    try:
        wait_until(lambda: payload(sub, topic) == "offline", what="offline at start")
        out.on_status(writer_beat())
        wait_until(lambda: payload(sub, topic) == "online", what="online with the writer")
        wait_until(lambda: payload(sub, topic) == "offline", 15, what="offline: beats stopped")
        out.on_status(writer_beat())
        wait_until(lambda: payload(sub, topic) == "online", what="online again")
        out.on_status(writer_beat("stopping"))
        wait_until(lambda: payload(sub, topic) == "offline", what="offline: writer stopping")
        out.on_status(writer_beat())
        wait_until(lambda: payload(sub, topic) == "online", what="online once more")
        run.close()
        wait_until(lambda: payload(sub, topic) == "offline", what="offline: uplink stopped")
        retained = Subscriber(broker.port, topic, client_id="ha-late")
        try:
            wait_until(lambda: payload(retained, topic) == "offline", what="retained")
        finally:
            retained.close()
    finally:
        sub.close()


def test_a_restarted_broker_gets_the_discovery_again(
    broker: Mosquitto, output: tuple[MqttOutput, MqttConfig]
) -> None:
    """A broker without persistence forgets retained configs when it dies; once the output
    is connected again it announces every sensor again."""
    out, _ = output
    sub = Subscriber(broker.port, "homeassistant/#", client_id="ha-1")
    wait_until(lambda: len(configs(sub)) == 6, what="configs")
    sub.close()
    broker.stop(signal.SIGKILL)
    broker.start()
    late: Callable[[], Subscriber] = lambda: Subscriber(broker.port, "homeassistant/#",  # noqa: E731
                                                        client_id="ha-2")
    again = late()
    try:
        wait_until(lambda: len(configs(again)) == 6, 30, what="configs after the restart")
    finally:
        again.close()
    assert out.presence.availability() == "offline"
