"""Settings: the whole validated configuration, assembled from values every check has passed.

The sensors' and the uplink's parts are typed sections of their own (sensors.py, uplink.py);
the bus, the writer's storage and the web page are flat fields here, grouped by process, as
every process reads them by these names (their rules are in bus.py). Built only by
load_settings() (loader.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from powmon.common.curvezmq import Curve
from powmon.common.errors import SettingsError
from powmon.common.settings.sensors import SensorSettings
from powmon.common.settings.uplink import MqttSettings, UplinkSettings, build_mqtt, build_uplink
from powmon.common.settings.values import Secret, resolve, secret


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole validated configuration; built only by load_settings()."""

    path: Path
    sensors: tuple[SensorSettings, ...]  # the readers', one per SENSORS entry
    log_level: int
    remote_save: bool  # the uplink's HTTP output on
    # the writer's storage
    data_root: Path
    data_file: str
    file_size_limit: int
    sync_write: bool
    flush_interval: float
    data_max_bytes: int | None  # DATA_MAX_BYTES: the raw files' total kept (None: no cap)
    data_keep_days: float | None  # DATA_KEEP_DAYS: a closed file's age kept (None: forever)
    rollup_keep_days: float | None  # ROLLUP_KEEP_DAYS: a rollup day's age kept (None: forever)
    compress: str  # COMPRESS: gzip | zstd | none, for a file once it is closed
    # the bus and its heartbeats
    broker_frontend: str
    broker_backend: str
    hwm: int
    heartbeat_interval: float
    curve: Curve | None  # None: the bus stays on loopback, in the clear
    replay_buffer: int
    replay_ports: tuple[int, int] | None  # None: the OS picks each replay socket's port
    # the supervisor's and the health's timing
    stall_timeout: float
    restart_backoff_max: float
    # the uplink's outputs
    uplink: UplinkSettings
    mqtt: MqttSettings
    # the web page
    web_listen: tuple[str, int] | None  # None: `powmon run` starts no web page
    web_token: Secret | None

    @property
    def uplink_outputs(self) -> tuple[str, ...]:
        """The uplink's outputs these settings turn on: 'http' (REMOTE_SAVE), 'mqtt' (MQTT_URL).

        Decided here, in the contract, so that the process table (which starts an uplink only
        when there is one) and the uplink (which builds them) agree without importing each
        other; empty: no uplink process at all."""
        return (("http",) if self.remote_save else ()) + (
            ("mqtt",) if self.mqtt.url is not None else ())

    def sensor(self, sensor_id: str) -> SensorSettings:
        for sensor in self.sensors:
            if sensor.sensor_id == sensor_id:
                return sensor
        known = ", ".join(repr(s.sensor_id) for s in self.sensors)
        raise SettingsError(f"{self.path}: SENSORS: no sensor {sensor_id!r} (known: {known})")


def build(
    where: Path,
    base: Path,
    v: dict[str, Any],
    sensors: tuple[SensorSettings, ...],
    curve: Curve | None,
) -> Settings:
    """The frozen Settings, from values every check has passed."""
    data_root = resolve(base, v["LOCAL_DATA_ROOT"])
    return Settings(
        path=where.resolve(), sensors=sensors, data_root=data_root,
        data_file=v["LOCAL_DATA_FILE"].lstrip("/"), file_size_limit=v["FILE_SIZE_LIMIT"],
        log_level=v["LOG_LEVEL"], remote_save=v["REMOTE_SAVE"], sync_write=v["SYNC_WRITE"],
        broker_frontend=v["BROKER_FRONTEND"], broker_backend=v["BROKER_BACKEND"], hwm=v["HWM"],
        heartbeat_interval=v["HEARTBEAT_INTERVAL"], stall_timeout=v["STALL_TIMEOUT"],
        flush_interval=v["FLUSH_INTERVAL"], replay_buffer=v["REPLAY_BUFFER"],
        data_max_bytes=v["DATA_MAX_BYTES"], data_keep_days=v["DATA_KEEP_DAYS"],
        rollup_keep_days=v["ROLLUP_KEEP_DAYS"],
        compress=v["COMPRESS"],
        restart_backoff_max=v["RESTART_BACKOFF_MAX"], uplink=build_uplink(base, data_root, v),
        web_listen=v["WEB_LISTEN"], web_token=secret(v["WEB_TOKEN"]),
        mqtt=build_mqtt(base, v), curve=curve,
        replay_ports=v["REPLAY_PORTS"],
    )
