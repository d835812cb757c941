"""MqttConfig: the MQTT output's settings, resolved and checked before any connection.

MQTT_URL gives scheme (mqtt:// plain, mqtts:// TLS), host, port (1883/8883 by default) and
optionally user:password; MQTT_USERNAME/MQTT_PASSWORD are the other place for them (one or the
other, not both). The password is a Secret and the URL is never logged whole: logs show
`mqtts://host:port` (`where`). The client id defaults to one derived from the host name and
the data root, so two PowMon installations on one host never take over each other's session.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from powmon.common.checks import MQTT_SCHEMES
from powmon.common.errors import SettingsError
from powmon.common.settings import Secret, Settings

log = logging.getLogger(__name__)

BATCH_SIZE: Final = 500  # readings published per round (each its own message)
BATCH_WAIT: Final = 0.05  # seconds a reading may wait for company: low latency, few rounds
_SLUG: Final = re.compile(r"[^A-Za-z0-9_-]")


def slug(text: str) -> str:
    """An id Home Assistant accepts in topics and unique ids ([A-Za-z0-9_-]); different
    texts stay different (a short hash is added when characters had to be replaced)."""
    clean = _SLUG.sub("_", text)
    if clean == text:
        return text
    return f"{clean}_{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def default_client_id(data_root: Path) -> str:
    digest = hashlib.sha256(str(data_root).encode()).hexdigest()[:8]
    return f"powmon-{slug(socket.gethostname())}-{digest}"


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    tls: bool
    username: str | None = field(repr=False)
    password: Secret | None
    ca_certs: str | None
    certfile: str | None
    keyfile: str | None
    tls_insecure: bool
    client_id: str
    keepalive: int
    timeout: float
    backoff_max: float
    topic: str
    discovery: str | None
    state_interval: float
    heartbeat_interval: float
    sensors: tuple[str, ...]

    @property
    def where(self) -> str:
        """The broker as it may appear in logs: no user, no password."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def node(self) -> str:
        """This PowMon installation in topics and Home Assistant ids."""
        return slug(self.client_id)

    @property
    def status_base(self) -> str:
        """`<first level of MQTT_TOPIC>/<node>`: where availability and state messages go."""
        head = self.topic.split("{", 1)[0].strip("/").split("/", 1)[0]
        return f"{head or 'powmon'}/{self.node}"

    @classmethod
    def from_settings(cls, settings: Settings) -> MqttConfig:
        m = settings.mqtt
        if m.url is None:
            raise SettingsError(f"{settings.path}: MQTT_URL: not set")
        if importlib.util.find_spec("paho") is None:
            raise SettingsError(
                f"{settings.path}: MQTT_URL: is set, but paho-mqtt is not installed; "
                "install powmon[mqtt]"
            )
        parts = urlsplit(m.url.reveal())  # checked by common.checks.mqtt_url
        # Credentials in MQTT_URL or in MQTT_USERNAME/MQTT_PASSWORD, not both: a rule of
        # settings.py (_check_mqtt), with the uplink's other rules of several keys.
        username = unquote(parts.username) if parts.username else m.username
        password = Secret(unquote(parts.password)) if parts.password is not None else m.password
        if m.tls_insecure:
            log.warning("MQTT_TLS_INSECURE is true: the broker's certificate is not checked")
        files = (("MQTT_CA_CERTS", m.ca_certs), ("MQTT_CERTFILE", m.certfile),
                 ("MQTT_KEYFILE", m.keyfile))
        for key, path in files:
            if path is not None and not path.is_file():
                raise SettingsError(
                    f"{settings.path}: {key}: expected an existing file, got {str(path)!r}"
                )
        return cls(
            host=parts.hostname or "", port=parts.port or MQTT_SCHEMES[parts.scheme],
            tls=parts.scheme == "mqtts", username=username, password=password,
            ca_certs=_text(m.ca_certs), certfile=_text(m.certfile), keyfile=_text(m.keyfile),
            tls_insecure=m.tls_insecure,
            client_id=m.client_id or default_client_id(settings.data_root),
            keepalive=m.keepalive, timeout=m.timeout, backoff_max=settings.uplink.backoff_max,
            topic=m.topic, discovery=m.discovery, state_interval=m.state_interval,
            heartbeat_interval=settings.heartbeat_interval,
            sensors=tuple(s.sensor_id for s in settings.sensors),
        )


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
