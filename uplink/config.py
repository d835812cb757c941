"""UplinkConfig: everything the uplink needs, checked and resolved before any I/O.

Which outputs run is decided in one place, `Settings.uplink_outputs`, which `powmon run`,
`powmon deploy` and the uplink itself all ask: the HTTP output (UPLINK_FORMAT: seed, csv,
json or influx) when REMOTE_SAVE is true, the MQTT output when MQTT_URL is set. The uplink
process runs when at least one is enabled.

Building the config decrypts HOST (keys.resolve_url), builds the InfluxDB write URL and the
Authorization header, checks the measurement name and the MQTT certificate files, so that
every problem with the settings stops the process with exit 2 before a socket or the spool
is opened.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from powmon.common.curve import Curve
from powmon.common.errors import SettingsError
from powmon.common.settings import Secret, Settings
from powmon.sink.api import CoreConfig
from powmon.uplink.formats import lp_unrepresentable
from powmon.uplink.influx import influx_v1_write_url, influx_write_url
from powmon.uplink.keys import redact_url, resolve_url
from powmon.uplink.mqtt_config import MqttConfig

log = logging.getLogger(__name__)

SUMMARY_INTERVAL: Final = 10.0
HTTP: Final = "http"
MQTT: Final = "mqtt"
UPLINK_GAP_LOG: Final = "uplink-gaps.csv"
DRAIN_MAX: Final = 1000  # bus messages per spool transaction (a message holds 1-4096 readings)
# What the uplink's own SUB socket may queue, in messages (at most HWM). ZeroMQ holds about
# 650 bytes per queued message here: a burst the uplink takes in more slowly than it comes
# would otherwise sit in this process, up to HWM (200,000 messages: ~130 MB). Past this the
# broker keeps the rest in its queue for this subscriber (HWM there), as before.
RECEIVE_HWM: Final = 10_000
WRITER_STATUS: Final = b"status/writer/"  # energy totals and health for the MQTT output


def enabled_outputs(settings: Settings) -> tuple[str, ...]:
    """The outputs the uplink runs ('http', 'mqtt'); empty: no uplink process at all."""
    return settings.uplink_outputs


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP output: the server (or InfluxDB), the body format, batching and retries."""

    url: Secret
    format: str
    batch_size: int
    batch_wait: float
    timeout: float
    backoff_max: float
    verify_tls: bool | str
    headers: Mapping[str, str] = field(repr=False)
    authorization: Secret | None
    measurement: str

    @property
    def where(self) -> str:
        """The server as it may appear in logs: scheme://host:port."""
        return redact_url(self.url.reveal())

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> HttpConfig:
        up = settings.uplink
        url = resolve_url(settings.path, up, environ)
        auth = up.token and Secret("Bearer " + up.token.reveal())
        if up.format == "influx":
            url, auth = _influx(settings, url)
        if isinstance(up.verify_tls, Path) and not up.verify_tls.is_file():
            raise SettingsError(
                f"{settings.path}: UPLINK_VERIFY_TLS: expected true, false or an existing CA "
                f"bundle file, got {str(up.verify_tls)!r} (not a file)"
            )
        if up.verify_tls is False:
            log.warning("UPLINK_VERIFY_TLS is false: the server's certificate is not checked")
        return cls(
            url=url, format=up.format, batch_size=up.batch_size, batch_wait=up.batch_wait,
            timeout=up.timeout, backoff_max=up.backoff_max,
            verify_tls=up.verify_tls if isinstance(up.verify_tls, bool) else str(up.verify_tls),
            headers=dict(up.headers), authorization=auth, measurement=up.influx_measurement,
        )


def _influx(settings: Settings, base: Secret) -> tuple[Secret, Secret | None]:
    """The write URL (1.x when INFLUX_DATABASE is set, else 2.x/3.x) and the Authorization."""
    up = settings.uplink
    _check_measurement(settings.path, up.influx_measurement)
    auth = up.influx_token and Secret("Token " + up.influx_token.reveal())
    if up.influx_database:
        return Secret(influx_v1_write_url(base.reveal(), up.influx_database)), auth
    # settings._check_influx makes INFLUX_ORG and INFLUX_BUCKET required here.
    url = influx_write_url(base.reveal(), up.influx_org or "", up.influx_bucket or "")
    if auth is None:
        log.warning("INFLUX_TOKEN is not set; InfluxDB 2 will refuse writes (401)")
    return Secret(url), auth


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """The uplink process: the bus, the one spool, and each enabled output's config."""

    broker_frontend: str
    broker_backend: str
    hwm: int
    heartbeat_interval: float
    spool_path: Path
    spool_max: int
    http: HttpConfig | None
    mqtt: MqttConfig | None
    summary_interval: float = SUMMARY_INTERVAL
    curve: Curve | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(name for name, cfg in ((HTTP, self.http), (MQTT, self.mqtt)) if cfg)

    def core(self) -> CoreConfig:
        """The sink core's part: the uplink's own loss log sits beside its spool (what the
        uplink lost may well be in the CSV files: gaps.csv is the writer's), and the writer's
        heartbeats come too (the MQTT output publishes its energy totals and health)."""
        return CoreConfig(
            process="uplink", backend=self.broker_backend, frontend=self.broker_frontend,
            hwm=min(self.hwm, RECEIVE_HWM), heartbeat_interval=self.heartbeat_interval,
            gap_log=self.spool_path.parent / UPLINK_GAP_LOG, fsync=True, batch=DRAIN_MAX,
            status_topics=(WRITER_STATUS,) if self.mqtt is not None else (),
            summary_interval=self.summary_interval, curve=self.curve,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> UplinkConfig:
        enabled = enabled_outputs(settings)
        if not enabled:
            raise SettingsError(
                f"{settings.path}: REMOTE_SAVE: is false and MQTT_URL is not set; set either "
                "to run the uplink"
            )
        return cls(
            broker_frontend=settings.broker_frontend, broker_backend=settings.broker_backend,
            hwm=settings.hwm, heartbeat_interval=settings.heartbeat_interval,
            spool_path=settings.uplink.spool_path, spool_max=settings.uplink.spool_max,
            http=HttpConfig.from_settings(settings, environ) if HTTP in enabled else None,
            mqtt=MqttConfig.from_settings(settings) if MQTT in enabled else None,
            curve=settings.curve,
        )


def _check_measurement(where: Path, name: str) -> None:
    why = lp_unrepresentable(name)
    if why is None and name.startswith("#"):
        why = "starts with '#' (a comment in line protocol)"
    if why is not None:
        raise SettingsError(
            f"{where}: INFLUX_MEASUREMENT: expected a line-protocol measurement name, "
            f"got {name!r}: it {why}"
        )
