"""UplinkConfig: everything the uplink needs, checked and resolved before any I/O.

Building it decrypts HOST (keys.resolve_url), builds the InfluxDB write URL and the
Authorization header, and checks the measurement name, so that every problem with the settings
stops the process with exit 2 before a socket or the spool is opened.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from powmon.common.errors import SettingsError
from powmon.common.settings import Secret, Settings
from powmon.sink.core import CoreConfig
from powmon.uplink.formats import lp_unrepresentable
from powmon.uplink.keys import redact_url, resolve_url

log = logging.getLogger(__name__)

INFLUX_WRITE_PATH: Final = "/api/v2/write"
SUMMARY_INTERVAL: Final = 10.0
UPLINK_GAP_LOG: Final = "uplink-gaps.csv"
DRAIN_MAX: Final = 5000  # readings per spool transaction


def influx_write_url(base: str, org: str, bucket: str) -> str:
    """`<base>/api/v2/write?org=..&bucket=..&precision=ns`; a base already ending in the write
    path is kept as it is."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if not path.endswith(INFLUX_WRITE_PATH):
        path += INFLUX_WRITE_PATH
    query = urlencode({"org": org, "bucket": bucket, "precision": "ns"})
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    broker_frontend: str
    broker_backend: str
    hwm: int
    heartbeat_interval: float
    spool_path: Path
    spool_max: int
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
    summary_interval: float = SUMMARY_INTERVAL

    def core(self) -> CoreConfig:
        """The sink core's part: the uplink's own loss log sits beside its spool (what the
        uplink lost may well be in the CSV files: gaps.csv is the writer's)."""
        return CoreConfig(
            process="uplink", backend=self.broker_backend, frontend=self.broker_frontend,
            hwm=self.hwm, heartbeat_interval=self.heartbeat_interval,
            gap_log=self.spool_path.parent / UPLINK_GAP_LOG, fsync=True, batch=DRAIN_MAX,
            summary_interval=self.summary_interval,
        )

    @property
    def where(self) -> str:
        """The server as it may appear in logs: scheme://host:port."""
        return redact_url(self.url.reveal())

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> UplinkConfig:
        up = settings.uplink
        if not settings.remote_save:
            raise SettingsError(
                f"{settings.path}: REMOTE_SAVE: is false; set it to true to run the uplink"
            )
        url = resolve_url(settings.path, up, environ)
        auth = up.token and Secret("Bearer " + up.token.reveal())
        if up.format == "influx":
            # _build() in settings makes INFLUX_ORG/INFLUX_BUCKET required for influx.
            url = Secret(
                influx_write_url(url.reveal(), up.influx_org or "", up.influx_bucket or "")
            )
            auth = up.influx_token and Secret("Token " + up.influx_token.reveal())
            _check_measurement(settings.path, up.influx_measurement)
            if auth is None:
                log.warning("INFLUX_TOKEN is not set; InfluxDB 2 will refuse writes (401)")
        if isinstance(up.verify_tls, Path) and not up.verify_tls.is_file():
            raise SettingsError(
                f"{settings.path}: UPLINK_VERIFY_TLS: expected true, false or an existing CA "
                f"bundle file, got {str(up.verify_tls)!r} (not a file)"
            )
        if up.verify_tls is False:
            log.warning("UPLINK_VERIFY_TLS is false: the server's certificate is not checked")
        return cls(
            broker_frontend=settings.broker_frontend, broker_backend=settings.broker_backend,
            hwm=settings.hwm, heartbeat_interval=settings.heartbeat_interval,
            spool_path=up.spool_path, spool_max=up.spool_max, url=url, format=up.format,
            batch_size=up.batch_size, batch_wait=up.batch_wait, timeout=up.timeout,
            backoff_max=up.backoff_max,
            verify_tls=up.verify_tls if isinstance(up.verify_tls, bool) else str(up.verify_tls),
            headers=dict(up.headers), authorization=auth, measurement=up.influx_measurement,
        )  # fmt: skip


def _check_measurement(where: Path, name: str) -> None:
    why = lp_unrepresentable(name)
    if why is None and name.startswith("#"):
        why = "starts with '#' (a comment in line protocol)"
    if why is not None:
        raise SettingsError(
            f"{where}: INFLUX_MEASUREMENT: expected a line-protocol measurement name, "
            f"got {name!r}: it {why}"
        )
