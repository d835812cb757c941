"""MQTT on the real pipeline: a simulated Arduino, reader, broker, writer and uplink processes
publishing to a real Mosquitto. Mosquitto is killed (-9) and restarted mid-run, then the
uplink is killed (-9) and restarted: every reading the writer stored arrives at the MQTT
subscriber at least once, and duplicates are the same message. Home Assistant sees the sensor
online with the writer's energy total (the uplink hears the writer's heartbeats), and offline
by the uplink's last will when it dies. The discovery messages carry what it needs."""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
import zmq

from powmon.common.schema.status import decode_status
from powmon.common.settings import load_settings
from powmon.common.transport import sub_socket
from powmon.uplink.homeassistant import availability_topic, energy_topic, state_topic
from powmon.uplink.mqtt_config import MqttConfig
from tests.helpers import Proc, data_rows, python_module, wait_until, write_settings
from tests.servers.mosquitto import Mosquitto, Subscriber

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
Key = tuple[str, str, int]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    root = tmp_path / "mosquitto"
    # Saved on every change, so that what the killed broker had acknowledged to PowMon still
    # reaches the test's subscriber (whose persistent session the restarted broker restores).
    mq = Mosquitto(root, extra=f"persistence true\npersistence_location {root}/\n"
                               "autosave_interval 1\nautosave_on_changes true\n")
    mq.config.write_text(mq.config.read_text().replace("persistence false\n", ""))
    mq.start()
    yield mq
    mq.stop()


def by_key(sub: Subscriber) -> dict[Key, list[bytes]]:
    out: dict[Key, list[bytes]] = defaultdict(list)
    for msg in sub.snapshot():
        if msg.topic == "powmon/VIC":
            d = json.loads(msg.payload)
            out[(d["sensor_id"], d["session"], d["seq"])].append(bytes(msg.payload))
    return out


class UplinkStatus:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], backend: str) -> None:
        self.sock = sub_socket(ctx, backend, [b"status/uplink/"], 1000, curve=None)
        self.counters: dict[str, object] = {}

    def mqtt(self) -> dict[str, object]:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                found = self.counters.get("output_mqtt")
                return found if isinstance(found, dict) else {}
            self.counters = dict(decode_status(frames).counters)


def test_every_stored_reading_reaches_mqtt_through_broker_and_uplink_kills(
    tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
    mosquitto: Mosquitto, zmq_ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """kill -9 of Mosquitto, then of the uplink, while a sensor samples at 50 Hz: each
    reading in the CSV files reaches the subscriber, a duplicate carries the same key and
    payload, and the last will says offline when the uplink dies."""
    settings = write_settings(
        tmp_path / "settings.yaml", [{"PORT": "sim://VIC?amps=2", "SENSORS_ID": "VIC"}],
        POLLING_DELAY=0.02, MQTT_URL=mosquitto.url, MQTT_DISCOVERY="homeassistant",
        UPLINK_BACKOFF_MAX=0.5, UPLINK_SPOOL="spool.sqlite3",
    )
    cfg = MqttConfig.from_settings(load_settings(settings))
    sub = Subscriber(mosquitto.port, "#", client_id="e2e-sub")
    status = UplinkStatus(zmq_ctx, yaml.safe_load(settings.read_text())["BROKER_BACKEND"])
    broker(settings)
    writer = spawn(python_module("powmon.writer", "--config", str(settings)), "writer")
    uplink = spawn(python_module("powmon.uplink", "--config", str(settings)), "uplink")
    wait_until(lambda: "uplink up" in uplink.output(), 30, what="uplink up")
    reader = spawn(python_module("powmon.readers", "--sensor-id", "VIC", "--config",
                                 str(settings)), "reader")
    try:
        wait_until(lambda: len(by_key(sub)) >= 100, 30, what="100 readings over MQTT")
        mosquitto.stop(signal.SIGKILL)
        wait_until(lambda: status.mqtt().get("state") == "retrying", 30, what="uplink retrying")
        mosquitto.start()
        seen = len(by_key(sub))
        wait_until(lambda: len(by_key(sub)) >= seen + 100, 30, what="flowing again")
        # The real uplink, fed the writer's heartbeats: online, with the writer's energy total.
        wait_until(lambda: (m := sub.latest(availability_topic(cfg))) is not None
                   and m.payload == b"online", 30, what="availability online (writer heard)")
        wait_until(lambda: (m := sub.latest(energy_topic(cfg, "VIC"))) is not None
                   and float(m.payload) > 0, 30, what="the writer's energy total for VIC")
        wait_until(lambda: sub.latest(state_topic(cfg, "VIC")) is not None, 30,
                   what="a state message for VIC")
        uplink.stop(signal.SIGKILL)
        wait_until(lambda: (m := sub.latest(availability_topic(cfg))) is not None
                   and m.payload == b"offline", 30, what="last will: offline")
        uplink = spawn(python_module("powmon.uplink", "--config", str(settings)), "uplink2")
        seen = len(by_key(sub))
        wait_until(lambda: len(by_key(sub)) >= seen + 100, 30, what="flowing after the restart")
    finally:
        assert reader.stop(signal.SIGTERM) == 0
        status.sock.close()
    stored = {(r["sensor_id"], r["session"], int(r["seq"])) for r in data_rows(tmp_path / "data")}
    wait_until(lambda: stored <= set(by_key(sub)), 60, what="every stored reading over MQTT")
    for key, copies in by_key(sub).items():
        assert len(set(copies)) == 1, f"{key}: duplicates differ"
    assert len(stored) > 300
    configs = {m.topic: json.loads(m.payload) for m in sub.snapshot()
               if m.topic.startswith("homeassistant/sensor/")}
    classes = {c["device_class"]: c for c in configs.values()}
    assert set(classes) == {"current", "power", "energy"}
    assert classes["energy"]["state_class"] == "total_increasing"
    assert classes["energy"]["unit_of_measurement"] in ("Wh", "kWh")
    assert uplink.stop(signal.SIGTERM) == 0
    assert writer.stop(signal.SIGTERM) == 0
    sub.close()
