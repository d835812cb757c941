"""Every kind of output the uplink can run, in one table: when it runs, its settings, its class.

The uplink builds its outputs from `KINDS` and nothing else: `enabled_kinds(settings)` says
which run, of the outputs that Settings.uplink_outputs turns on (the one rule, which
base.processes asks too, to know whether an uplink runs at all; UPLINK_FORMAT picks the HTTP
kind). Each kind's `configure` resolves and checks its settings before any I/O (exit 2 on a
mistake), its `output` makes the Output (contract.py) that a Worker drives, and its
`status_topics` are the heartbeats its BusWatcher wants from the bus. A new kind is one row here.

`name` is the output's identity: its position in the spool, `output_<name>` in the heartbeat,
its log lines and its dead letters. The HTTP formats and InfluxDB both run as `http`: both
are REMOTE_SAVE's output, which UPLINK_FORMAT makes one or the other (their formats do not
overlap), so a spool keeps its position when the format changes, as it always has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from powmon.common.settings import Settings
from powmon.uplink.contract import Output
from powmon.uplink.http_output import HttpConfig, HttpOutput
from powmon.uplink.influx import InfluxOutput, influx_config
from powmon.uplink.mqtt_config import MqttConfig

HTTP: Final = "http"
MQTT: Final = "mqtt"
HTTP_FORMATS: Final = ("seed", "csv", "json")
INFLUX_FORMAT: Final = "influx"
WRITER_STATUS: Final = b"status/writer/"  # energy totals and health for the MQTT output

_SERVER_KEYS: Final = (  # where REMOTE_SAVE sends, and how
    "REMOTE_SAVE", "UPLINK_URL", "HOST", "HOST_KEY_ENV", "HOST_KEY_FILE", "LOCAL_DATA_PATH",
    "UPLINK_FORMAT", "UPLINK_BATCH_SIZE", "UPLINK_BATCH_WAIT", "UPLINK_TIMEOUT",
    "UPLINK_BACKOFF_MAX", "UPLINK_VERIFY_TLS", "UPLINK_HEADERS",
)


class OutputConfig(Protocol):
    """What the uplink reads of any kind's config: how long one delivery may take."""

    @property
    def timeout(self) -> float: ...


C = TypeVar("C", bound=OutputConfig)


@dataclass(frozen=True, slots=True)
class OutputKind(Generic[C]):
    """One row of the table."""

    name: str  # the output it runs (see the module docstring)
    what: str
    keys: tuple[str, ...]  # the settings it reads (docs/uplink.md's table has them all)
    enabled: Callable[[Settings], bool]
    configure: Callable[[Settings, Mapping[str, str] | None], C]
    output: Callable[[C], Output[Any]]
    status_topics: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Configured(Generic[C]):
    """An enabled kind and its resolved config."""

    kind: OutputKind[C]
    config: C

    def output(self) -> Output[Any]:
        return self.kind.output(self.config)


def _mqtt_config(settings: Settings, environ: Mapping[str, str] | None) -> MqttConfig:
    return MqttConfig.from_settings(settings)


def _mqtt_output(cfg: MqttConfig) -> Output[Any]:
    # Imported here: paho-mqtt is an extra (powmon[mqtt]); HTTP-only installs lack it.
    from powmon.uplink.mqtt import MqttOutput  # noqa: PLC0415

    return MqttOutput(cfg)


HTTP_KIND: Final[OutputKind[HttpConfig]] = OutputKind(
    name=HTTP, what="HTTP: seed, csv or json to UPLINK_URL or HOST",
    keys=(*_SERVER_KEYS, "UPLINK_TOKEN"),
    enabled=lambda s: HTTP in s.uplink_outputs and s.uplink.format in HTTP_FORMATS,
    configure=HttpConfig.from_settings, output=HttpOutput,
)
INFLUX_KIND: Final[OutputKind[HttpConfig]] = OutputKind(
    name=HTTP, what="InfluxDB 1.x, 2.x, 3.x: line protocol to UPLINK_URL",
    keys=(*_SERVER_KEYS, "INFLUX_DATABASE", "INFLUX_ORG", "INFLUX_BUCKET", "INFLUX_TOKEN",
          "INFLUX_MEASUREMENT"),
    enabled=lambda s: HTTP in s.uplink_outputs and s.uplink.format == INFLUX_FORMAT,
    configure=influx_config, output=InfluxOutput,
)
MQTT_KIND: Final[OutputKind[MqttConfig]] = OutputKind(
    name=MQTT, what="MQTT, with Home Assistant discovery",
    keys=("MQTT_URL", "MQTT_TOPIC", "MQTT_CLIENT_ID", "MQTT_USERNAME", "MQTT_PASSWORD",
          "MQTT_CA_CERTS", "MQTT_CERTFILE", "MQTT_KEYFILE", "MQTT_TLS_INSECURE",
          "MQTT_KEEPALIVE", "MQTT_TIMEOUT", "MQTT_DISCOVERY", "MQTT_STATE_INTERVAL",
          "UPLINK_BACKOFF_MAX"),
    enabled=lambda s: MQTT in s.uplink_outputs,
    configure=_mqtt_config, output=_mqtt_output, status_topics=(WRITER_STATUS,),
)
KINDS: Final[tuple[OutputKind[Any], ...]] = (HTTP_KIND, INFLUX_KIND, MQTT_KIND)


def enabled_kinds(settings: Settings) -> tuple[OutputKind[Any], ...]:
    """The kinds these settings run, in the table's order (empty: no uplink process)."""
    return tuple(kind for kind in KINDS if kind.enabled(settings))
