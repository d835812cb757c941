"""The uplink's section: the HTTP/InfluxDB output and the spool (UplinkSettings), the MQTT
output (MqttSettings), and the rules between their keys.

What is checked here needs only the file: that REMOTE_SAVE has somewhere to send, which
InfluxDB version the keys choose, how MQTT_URL goes with the TLS and user keys. What needs
the outside world (decrypting HOST, the CA bundle and certificate files existing) is checked
by the uplink when it builds its config, before it opens anything (uplink/config.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from powmon.common.errors import SettingsError
from powmon.common.settings.problems import Found
from powmon.common.settings.values import Secret, resolve, secret

_INFLUX_KEYS: Final = ("INFLUX_ORG", "INFLUX_BUCKET", "INFLUX_DATABASE")
_MQTT_KEYS: Final = (
    "MQTT_URL", "MQTT_USERNAME", "MQTT_CA_CERTS", "MQTT_CERTFILE", "MQTT_KEYFILE",
    "MQTT_TLS_INSECURE", "MQTT_PASSWORD",
)


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """Where and how readings go to the remote HTTP server or InfluxDB (used only when
    REMOTE_SAVE is true), and the spool every output shares."""

    url: str | None
    host_token: str | None
    legacy_key: Secret | None
    key_env: str
    key_file: Path | None
    format: str
    batch_size: int
    batch_wait: float
    timeout: float
    backoff_max: float
    spool_path: Path
    spool_max: int
    verify_tls: bool | Path
    token: Secret | None
    headers: Mapping[str, str]
    influx_org: str | None
    influx_bucket: str | None
    influx_database: str | None
    influx_token: Secret | None
    influx_measurement: str


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The MQTT output (used only when MQTT_URL is set); independent of REMOTE_SAVE."""

    url: Secret | None  # may carry user:password
    topic: str
    client_id: str | None
    username: str | None
    password: Secret | None
    ca_certs: Path | None
    certfile: Path | None
    keyfile: Path | None
    tls_insecure: bool
    keepalive: int
    timeout: float
    discovery: str | None
    state_interval: float


def check_uplink(found: Found, v: dict[str, Any]) -> None:
    """The rules between the uplink's keys, each given every key it needs valid."""
    if found.trusts("REMOTE_SAVE", "UPLINK_URL", "HOST") and (
        v["REMOTE_SAVE"] and not (v["UPLINK_URL"] or v["HOST"])
    ):
        found.add(
            "REMOTE_SAVE",
            "is true, but neither UPLINK_URL nor HOST says where to send readings",
        )
    if v["REMOTE_SAVE"] and v["UPLINK_FORMAT"] == "influx":
        found.run(("REMOTE_SAVE", "UPLINK_FORMAT", *_INFLUX_KEYS), _check_influx, found.where, v)
    found.run(_MQTT_KEYS, _check_mqtt, found.where, v)


def _check_influx(where: Path, v: dict[str, Any]) -> None:
    """InfluxDB 1.x is chosen by INFLUX_DATABASE, 2.x/3.x by INFLUX_ORG + INFLUX_BUCKET."""
    v2 = [key for key in ("INFLUX_ORG", "INFLUX_BUCKET") if v[key]]
    if v["INFLUX_DATABASE"] and v2:
        raise SettingsError(
            f"{where}: INFLUX_DATABASE: set it for InfluxDB 1.x, or {' and '.join(v2)} for "
            "InfluxDB 2.x/3.x, not both"
        )
    if not v["INFLUX_DATABASE"]:
        for key in ("INFLUX_ORG", "INFLUX_BUCKET"):
            if not v[key]:
                raise SettingsError(
                    f"{where}: {key}: required when UPLINK_FORMAT is 'influx' (InfluxDB 2.x/3.x;"
                    " for 1.x set INFLUX_DATABASE instead)"
                )


def _check_mqtt(where: Path, v: dict[str, Any]) -> None:
    url = v["MQTT_URL"]
    tls_keys = [k for k in ("MQTT_CA_CERTS", "MQTT_CERTFILE", "MQTT_KEYFILE") if v[k]]
    if v["MQTT_TLS_INSECURE"]:
        tls_keys.append("MQTT_TLS_INSECURE")
    if url and tls_keys and not url.startswith("mqtts://"):
        raise SettingsError(f"{where}: {tls_keys[0]}: TLS options need an mqtts:// MQTT_URL")
    if url and v["MQTT_USERNAME"] and "@" in url.split("://", 1)[1]:
        raise SettingsError(
            f"{where}: MQTT_USERNAME: the user is already in MQTT_URL; give it in one place"
        )
    if url and v["MQTT_PASSWORD"] and ":" in url.split("://", 1)[1].rpartition("@")[0]:
        raise SettingsError(
            f"{where}: MQTT_PASSWORD: the password is already in MQTT_URL; give it in one place"
        )
    if v["MQTT_KEYFILE"] and not v["MQTT_CERTFILE"]:
        raise SettingsError(f"{where}: MQTT_KEYFILE: needs MQTT_CERTFILE (the client certificate)")


def build_uplink(base: Path, data_root: Path, v: dict[str, Any]) -> UplinkSettings:
    """The HTTP output's settings; the spool sits under the data root unless absolute."""
    verify = v["UPLINK_VERIFY_TLS"]
    return UplinkSettings(
        url=v["UPLINK_URL"], host_token=v["HOST"], legacy_key=secret(v["LOCAL_DATA_PATH"]),
        key_env=v["HOST_KEY_ENV"],
        key_file=resolve(base, v["HOST_KEY_FILE"]) if v["HOST_KEY_FILE"] else None,
        format=v["UPLINK_FORMAT"], batch_size=v["UPLINK_BATCH_SIZE"],
        batch_wait=v["UPLINK_BATCH_WAIT"], timeout=v["UPLINK_TIMEOUT"],
        backoff_max=v["UPLINK_BACKOFF_MAX"],
        spool_path=resolve(data_root, v["UPLINK_SPOOL"]), spool_max=v["UPLINK_SPOOL_MAX"],
        verify_tls=verify if isinstance(verify, bool) else resolve(base, verify),
        token=secret(v["UPLINK_TOKEN"]), headers=dict(v["UPLINK_HEADERS"]),
        influx_org=v["INFLUX_ORG"], influx_bucket=v["INFLUX_BUCKET"],
        influx_database=v["INFLUX_DATABASE"], influx_token=secret(v["INFLUX_TOKEN"]),
        influx_measurement=v["INFLUX_MEASUREMENT"],
    )


def build_mqtt(base: Path, v: dict[str, Any]) -> MqttSettings:
    def path(key: str) -> Path | None:
        return resolve(base, v[key]) if v[key] else None

    return MqttSettings(
        url=secret(v["MQTT_URL"]), topic=v["MQTT_TOPIC"], client_id=v["MQTT_CLIENT_ID"],
        username=v["MQTT_USERNAME"], password=secret(v["MQTT_PASSWORD"]),
        ca_certs=path("MQTT_CA_CERTS"), certfile=path("MQTT_CERTFILE"),
        keyfile=path("MQTT_KEYFILE"), tls_insecure=v["MQTT_TLS_INSECURE"],
        keepalive=v["MQTT_KEEPALIVE"], timeout=v["MQTT_TIMEOUT"],
        discovery=v["MQTT_DISCOVERY"], state_interval=v["MQTT_STATE_INTERVAL"],
    )
