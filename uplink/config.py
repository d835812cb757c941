"""UplinkConfig: everything the uplink needs, checked and resolved before any I/O.

Which outputs run, and how each is configured and built, is registry.py's table; this module
asks it: `enabled_outputs(settings)` (what `powmon run`, `powmon deploy` and the uplink itself
ask: the HTTP output, in its UPLINK_FORMAT, when REMOTE_SAVE is true; the MQTT output when
MQTT_URL is set) and `UplinkConfig.from_settings`, which configures every enabled kind. The
uplink process runs when at least one is enabled.

Configuring decrypts HOST (server_url.resolve_url), builds the InfluxDB write URL and the
Authorization header, checks the measurement name and the MQTT certificate files, so that
every problem with the settings stops the process with exit 2 before a socket or the spool
is opened. The rules that tie several keys together (REMOTE_SAVE needs UPLINK_URL or HOST;
InfluxDB 1.x or 2.x; MQTT credentials and TLS options) are checked once, in one place, when
settings.yaml is loaded (common/settings.py, `_check_together`): nothing here repeats them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from powmon.common.curvezmq import Curve
from powmon.common.errors import SettingsError
from powmon.common.settings import Settings
from powmon.sink.api import CoreConfig
from powmon.uplink.http_output import HttpConfig
from powmon.uplink.mqtt_config import MqttConfig
from powmon.uplink.registry import HTTP, MQTT, Configured, enabled_kinds

SUMMARY_INTERVAL: Final = 10.0
UPLINK_GAP_LOG: Final = "uplink-gaps.csv"
DRAIN_MAX: Final = 1000  # bus messages per spool transaction (a message holds 1-4096 readings)
# What the uplink's own SUB socket may queue, in messages (at most HWM). ZeroMQ holds about
# 650 bytes per queued message here: a burst the uplink takes in more slowly than it comes
# would otherwise sit in this process, up to HWM (200,000 messages: ~130 MB). Past this the
# broker keeps the rest in its queue for this subscriber (HWM there), as before.
RECEIVE_HWM: Final = 10_000


def enabled_outputs(settings: Settings) -> tuple[str, ...]:
    """The outputs the uplink runs ('http', 'mqtt'); empty: no uplink process at all."""
    return tuple(kind.name for kind in enabled_kinds(settings))


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """The uplink process: the bus, the one spool, and each enabled output's kind and config."""

    broker_frontend: str
    broker_backend: str
    hwm: int
    heartbeat_interval: float
    spool_path: Path
    spool_max: int
    configured: tuple[Configured[Any], ...]
    summary_interval: float = SUMMARY_INTERVAL
    curve: Curve | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(c.kind.name for c in self.configured)

    @property
    def http(self) -> HttpConfig | None:
        """REMOTE_SAVE's output's config (HTTP formats or InfluxDB), if it runs."""
        found = self._config(HTTP)
        return found if isinstance(found, HttpConfig) else None

    @property
    def mqtt(self) -> MqttConfig | None:
        found = self._config(MQTT)
        return found if isinstance(found, MqttConfig) else None

    def _config(self, name: str) -> object:
        return next((c.config for c in self.configured if c.kind.name == name), None)

    def core(self) -> CoreConfig:
        """The sink core's part: the uplink's own loss log sits beside its spool (what the
        uplink lost may well be in the CSV files: gaps.csv is the writer's), and the
        heartbeats its outputs watch come too (the MQTT output publishes the writer's energy
        totals and health)."""
        return CoreConfig(
            process="uplink", backend=self.broker_backend, frontend=self.broker_frontend,
            hwm=min(self.hwm, RECEIVE_HWM), heartbeat_interval=self.heartbeat_interval,
            gap_log=self.spool_path.parent / UPLINK_GAP_LOG, fsync=True, batch=DRAIN_MAX,
            status_topics=tuple(t for c in self.configured for t in c.kind.status_topics),
            summary_interval=self.summary_interval, curve=self.curve,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> UplinkConfig:
        kinds = enabled_kinds(settings)
        if not kinds:
            raise SettingsError(
                f"{settings.path}: REMOTE_SAVE: is false and MQTT_URL is not set; set either "
                "to run the uplink"
            )
        return cls(
            broker_frontend=settings.broker_frontend, broker_backend=settings.broker_backend,
            hwm=settings.hwm, heartbeat_interval=settings.heartbeat_interval,
            spool_path=settings.uplink.spool_path, spool_max=settings.uplink.spool_max,
            configured=tuple(Configured(k, k.configure(settings, environ)) for k in kinds),
            curve=settings.curve,
        )
