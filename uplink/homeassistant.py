"""Home Assistant over MQTT: discovery, throttled state, and availability from pipeline health.

With MQTT_DISCOVERY (the discovery prefix, normally `homeassistant`), each sensor becomes one
Home Assistant device with three entities, announced by retained config messages on
`<prefix>/sensor/<node>/<sensor>_<kind>/config`:
- current: device_class current, state_class measurement, A;
- power: device_class power, state_class measurement, W;
- energy: device_class energy, state_class total_increasing, Wh (what the energy dashboard
  needs), from the writer's heartbeat (`energy_wh`: {sensor_id: Wh}).
Current and power come from a JSON state message per sensor (`<base>/<node>/<sensor>/state`,
retained: amps, watts, volts, session, seq, timestamp), published at most once per
MQTT_STATE_INTERVAL per sensor with the latest reading, not once per reading; energy from a
plain number on `.../energy`. Every entity shares one availability topic
(`<base>/<node>/availability`, retained): `online` while the writer's heartbeats arrive (the
pipeline is storing readings), `offline` when they stop or say the writer is stopping, when
the uplink stops, and, through the MQTT last will, when the uplink dies.

Without MQTT_DISCOVERY only the availability topic is published (it is the connection's
last will anyway). The `Presence` here only decides what to publish; mqtt.py gives it a
`publish` callable bound to the live connection and calls `tick()` a few times a second.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from powmon import __version__
from powmon.base.text import format_ts
from powmon.common.schema.readings import Reading
from powmon.common.schema.status import Status
from powmon.uplink.mqtt_config import MqttConfig, slug

ONLINE: Final = "online"
OFFLINE: Final = "offline"
WRITER: Final = "writer"
STALE_BEATS: Final = 3.0  # the writer is gone after this many heartbeat intervals of silence
STALE_MIN_S: Final = 3.0

Publish = Callable[[str, bytes, int, bool], None]  # topic, payload, qos, retain
_Message = tuple[str, bytes, int, bool]

# kind -> (entity name, device_class, state_class, unit)
ENTITIES: Final = {
    "current": ("Current", "current", "measurement", "A"),
    "power": ("Power", "power", "measurement", "W"),
    "energy": ("Energy", "energy", "total_increasing", "Wh"),
}
_TEMPLATES: Final = {"current": "{{ value_json.amps }}", "power": "{{ value_json.watts }}"}


def availability_topic(cfg: MqttConfig) -> str:
    return f"{cfg.status_base}/availability"


def state_topic(cfg: MqttConfig, sensor_id: str) -> str:
    return f"{cfg.status_base}/{slug(sensor_id)}/state"


def energy_topic(cfg: MqttConfig, sensor_id: str) -> str:
    return f"{cfg.status_base}/{slug(sensor_id)}/energy"


def discovery(cfg: MqttConfig, sensor_id: str) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) of the three retained config messages of one sensor."""
    if cfg.discovery is None:
        return
    sid = slug(sensor_id)
    device = {
        "identifiers": [f"{cfg.node}_{sid}"], "name": f"PowMon {sensor_id}",
        "manufacturer": "PowMon", "model": "ACS712 current sensor", "sw_version": __version__,
    }
    for kind, (name, device_class, state_class, unit) in ENTITIES.items():
        config: dict[str, Any] = {
            "name": name, "unique_id": f"{cfg.node}_{sid}_{kind}",
            "device_class": device_class, "state_class": state_class,
            "unit_of_measurement": unit, "availability_topic": availability_topic(cfg),
            "payload_available": ONLINE, "payload_not_available": OFFLINE,
            "device": device, "origin": {"name": "PowMon", "sw_version": __version__},
        }
        if kind in _TEMPLATES:
            config["state_topic"] = state_topic(cfg, sensor_id)
            config["value_template"] = _TEMPLATES[kind]
            config["json_attributes_topic"] = state_topic(cfg, sensor_id)
        else:
            config["state_topic"] = energy_topic(cfg, sensor_id)
        topic = f"{cfg.discovery}/sensor/{cfg.node}/{sid}_{kind}/config"
        yield topic, json.dumps(config, separators=(",", ":")).encode()


def state_payload(r: Reading) -> bytes:
    return json.dumps(
        {"amps": r.amps, "watts": r.watts, "volts": r.volts, "sensor_id": r.sensor_id,
         "session": r.session, "seq": r.seq, "timestamp": format_ts(r.ts_ns)},
        separators=(",", ":"), allow_nan=False,
    ).encode()


@dataclass
class _Sensor:
    latest: Reading | None = None
    state_due: bool = False
    next_state: float = 0.0
    energy_wh: float | None = None
    energy_due: bool = False
    announced: bool = False


class Presence:
    """Latest values and pipeline health, fed by the uplink's receive loop (on_readings,
    on_status) and published from the MQTT output's thread (tick). Thread-safe."""

    def __init__(self, cfg: MqttConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        self._sensors: dict[str, _Sensor] = {s: _Sensor() for s in cfg.sensors}
        self._writer_seen: float | None = None
        self._writer_stopping = False
        self._published: str | None = None  # availability last published on this connection
        self._stale = max(STALE_MIN_S, STALE_BEATS * cfg.heartbeat_interval)

    def on_readings(self, readings: Sequence[Reading]) -> None:
        if self._cfg.discovery is None:  # no state is published without discovery
            return
        with self._lock:
            for r in readings:
                sensor = self._sensor(r.sensor_id)
                if sensor.latest is None or r.ts_ns >= sensor.latest.ts_ns:
                    sensor.latest = r
                    sensor.state_due = True

    def on_status(self, status: Status) -> None:
        if status.process != WRITER:
            return
        totals = status.counters.get("energy_wh")
        with self._lock:
            self._writer_seen = self._clock()
            self._writer_stopping = status.state == "stopping"
            if isinstance(totals, Mapping):
                for sensor_id, wh in totals.items():
                    if isinstance(wh, int | float) and not isinstance(wh, bool):
                        sensor = self._sensor(str(sensor_id))
                        if sensor.energy_wh != wh:
                            sensor.energy_wh, sensor.energy_due = float(wh), True

    def _sensor(self, sensor_id: str) -> _Sensor:
        sensor = self._sensors.get(sensor_id)
        if sensor is None:
            sensor = self._sensors[sensor_id] = _Sensor()
        return sensor

    def availability(self) -> str:
        with self._lock:
            seen, stopping = self._writer_seen, self._writer_stopping
        fresh = seen is not None and self._clock() - seen <= self._stale
        return ONLINE if fresh and not stopping else OFFLINE

    def connected(self) -> None:
        """A new connection: announce every sensor and the availability again (a restarted
        broker without persistence has forgotten the retained messages)."""
        with self._lock:
            self._published = None
            for sensor in self._sensors.values():
                sensor.announced = False
                sensor.state_due = sensor.latest is not None
                sensor.energy_due = sensor.energy_wh is not None

    def tick(self, publish: Publish) -> None:
        """Publish what is due: discovery of new sensors, availability changes, state at
        most once per MQTT_STATE_INTERVAL per sensor, energy when it changed."""
        now = self._clock()
        state = self.availability()
        out: list[_Message] = []
        with self._lock:
            if state != self._published:
                self._published = state
                out.append((availability_topic(self._cfg), state.encode(), 1, True))
            for sensor_id, sensor in self._sensors.items():
                out += self._due(sensor_id, sensor, now)
        for topic, payload, qos, retain in out:
            publish(topic, payload, qos, retain)

    def _due(self, sensor_id: str, sensor: _Sensor, now: float) -> list[_Message]:
        out: list[_Message] = []
        if not sensor.announced:
            sensor.announced = True
            out += [(topic, payload, 1, True) for topic, payload in discovery(self._cfg, sensor_id)]
        if self._cfg.discovery is None:  # state and energy are for Home Assistant only
            return out
        if sensor.state_due and sensor.latest is not None and now >= sensor.next_state:
            sensor.state_due = False
            sensor.next_state = now + self._cfg.state_interval
            out.append((state_topic(self._cfg, sensor_id), state_payload(sensor.latest), 0, True))
        if sensor.energy_due and sensor.energy_wh is not None:
            sensor.energy_due = False
            energy = repr(sensor.energy_wh).encode()
            out.append((energy_topic(self._cfg, sensor_id), energy, 0, True))
        return out
