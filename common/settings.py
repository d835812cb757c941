"""settings.yaml, loaded once, validated completely, and frozen.

Every check happens here, before any process opens a port or a socket, so that a typo stops the
program with one line naming the file, the key, what was expected and what was found, instead of
a traceback minutes later. The original script's keys load unchanged (misspelled BUDRATE
included); new keys sit beside them. Nothing in PowMon ever writes this file.
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from powmon.common import checks as c
from powmon.common.curve import Curve, check_folder, is_local_endpoint, load_pair, load_public
from powmon.common.errors import SettingsError

ENV_SETTINGS: Final = "POWMON_SETTINGS"
DEFAULT_SETTINGS: Final = "settings.yaml"
UPLINK_FORMATS: Final = ("seed", "csv", "json", "influx")
SENSOR_MODES: Final = ("dc", "ac")
# `read N\n` is 7 bytes: 8 of them (56 bytes) fit the Arduino's 64-byte receive buffer.
MAX_PIPELINE: Final = 8

# Keys whose values are secrets (the uplink's credentials): never shown, never logged.
SECRET_KEYS: Final = frozenset(
    {"LOCAL_DATA_PATH", "UPLINK_TOKEN", "INFLUX_TOKEN", "WEB_TOKEN", "MQTT_PASSWORD"}
)

# Keys the original script wrote into its own file; they carry nothing PowMon needs.
LEGACY_IGNORED: Final = frozenset({"EHOST", "PROJECT_ROOT"})


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class SensorSettings:
    """One serial port and the calibration of the sensor behind it."""

    sensor_id: str
    port: str
    baudrate: int
    timeout: float
    polling_delay: float
    vpp: float
    offset: float
    sns: float
    vcc: float
    max_amps: float
    channel: int | None
    avg: int
    mode: str
    mains_hz: int
    ac_cycles: int
    stream: str = "auto"  # auto | on | off (docs/reader.md, "Stream mode")
    stream_hz: int | None = None  # None: 1 / POLLING_DELAY (readers/modes.py)
    read_pipeline: int = 4  # requests in flight in request/answer mode

    @property
    def stream_rate(self) -> int | None:
        """The `stream HZ` to ask for: STREAM_HZ, else 1 / POLLING_DELAY rounded (at least 1);
        0 for POLLING_DELAY 0 (the board's highest); None when the period is longer than the
        slowest stream (1 Hz) and STREAM_HZ does not say otherwise."""
        if self.stream_hz is not None:
            return self.stream_hz
        if self.polling_delay == 0:
            return 0
        if self.polling_delay > 1.0:
            return None
        return max(1, round(1 / self.polling_delay))


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


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole validated configuration; built only by load_settings()."""

    path: Path
    sensors: tuple[SensorSettings, ...]
    data_root: Path
    data_file: str
    file_size_limit: int
    log_level: int
    remote_save: bool
    sync_write: bool
    broker_frontend: str
    broker_backend: str
    hwm: int
    heartbeat_interval: float
    stall_timeout: float
    flush_interval: float
    replay_buffer: int
    restart_backoff_max: float
    uplink: UplinkSettings
    web_listen: tuple[str, int] | None  # None: `powmon run` starts no web page
    web_token: Secret | None
    mqtt: MqttSettings
    curve: Curve | None  # None: the bus stays on loopback, in the clear
    replay_ports: tuple[int, int] | None  # None: the OS picks each replay socket's port

    def sensor(self, sensor_id: str) -> SensorSettings:
        for sensor in self.sensors:
            if sensor.sensor_id == sensor_id:
                return sensor
        known = ", ".join(repr(s.sensor_id) for s in self.sensors)
        raise SettingsError(f"{self.path}: SENSORS: no sensor {sensor_id!r} (known: {known})")


# Original keys first, then PowMon's additions. key -> (check, default)
_TOP: Final[dict[str, tuple[c.Check, Any]]] = {
    "SENSORS": (lambda v: v, c.REQUIRED),
    "BUDRATE": (c.integer(1), 9600),
    "TIMEOUT": (c.number(0, lo_open=True), 1.0),
    "POLLING_DELAY": (c.number(0), 0.1),
    "FILE_SIZE_LIMIT": (c.integer(1024), 10_000_000),
    "LOCAL_DATA_ROOT": (c.path("a folder path"), "data"),
    "LOCAL_DATA_FILE": (c.text("a file name like 'data.csv'", r"/?[^/\\]+"), "data.csv"),
    "LOG_LEVEL": (c.integer(0, 3), 1),
    "REMOTE_SAVE": (c.boolean, False),
    "SYNC_WRITE": (c.boolean, True),
    "VPP": (c.number(0, lo_open=True), 5.0 / 1024),
    "OFFSET": (c.number(), 2.5),
    "SNS": (c.number(0, lo_open=True), 0.066),
    "VCC": (c.number(), 5.0),
    "HOST": (c.optional(c.text("a Fernet token (from 'powmon encrypt-url')")), None),
    "LOCAL_DATA_PATH": (c.optional(c.text("a Fernet key (from 'powmon keygen')")), None),
    "MAX_AMPS": (c.number(0, lo_open=True), 10.0),
    "BROKER_FRONTEND": (c.ENDPOINT, "tcp://127.0.0.1:5555"),
    "BROKER_BACKEND": (c.ENDPOINT, "tcp://127.0.0.1:5556"),
    "HWM": (c.integer(1000), 200_000),
    "HEARTBEAT_INTERVAL": (c.number(0.05, 60), 1.0),
    "STALL_TIMEOUT": (c.number(1), 15.0),
    "FLUSH_INTERVAL": (c.number(0.01, 1.0), 0.5),
    "REPLAY_BUFFER": (c.integer(0), 60_000),
    "RESTART_BACKOFF_MAX": (c.number(0.1), 30.0),
    "STREAM": (c.stream_mode, "auto"),
    "STREAM_HZ": (c.optional(c.integer(1, 65535)), None),
    "READ_PIPELINE": (c.integer(1, MAX_PIPELINE), 4),
    "UPLINK_URL": (c.optional(c.URL), None),
    "HOST_KEY_ENV": (
        c.text("an environment variable name", r"[A-Za-z_][A-Za-z0-9_]*"),
        "POWMON_HOST_KEY",
    ),
    "HOST_KEY_FILE": (c.optional(c.PATH), None),
    "UPLINK_FORMAT": (c.choice(UPLINK_FORMATS), "seed"),
    "UPLINK_BATCH_SIZE": (c.integer(1, 100_000), 500),
    "UPLINK_BATCH_WAIT": (c.number(0), 1.0),
    "UPLINK_TIMEOUT": (c.number(0, lo_open=True), 5.0),
    "UPLINK_BACKOFF_MAX": (c.number(0.1), 60.0),
    "UPLINK_SPOOL": (c.PATH, "uplink-spool.sqlite3"),
    "UPLINK_SPOOL_MAX": (c.integer(1000), 5_000_000),
    "UPLINK_VERIFY_TLS": (c.verify_tls, True),
    "UPLINK_TOKEN": (c.optional(c.text()), None),
    "UPLINK_HEADERS": (c.headers, {}),
    "INFLUX_ORG": (c.optional(c.text()), None),
    "INFLUX_BUCKET": (c.optional(c.text()), None),
    "INFLUX_DATABASE": (c.optional(c.text()), None),
    "INFLUX_TOKEN": (c.optional(c.text()), None),
    "INFLUX_MEASUREMENT": (c.text(), "power"),
    "WEB_LISTEN": (c.optional(c.listen), None),
    "WEB_TOKEN": (c.optional(c.text("a token string")), None),
    "MQTT_URL": (c.optional(c.mqtt_url), None),
    "MQTT_TOPIC": (c.mqtt_topic, "powmon/{sensor_id}"),
    "MQTT_CLIENT_ID": (c.optional(c.text()), None),
    "MQTT_USERNAME": (c.optional(c.text()), None),
    "MQTT_PASSWORD": (c.optional(c.text()), None),
    "MQTT_CA_CERTS": (c.optional(c.PATH), None),
    "MQTT_CERTFILE": (c.optional(c.PATH), None),
    "MQTT_KEYFILE": (c.optional(c.PATH), None),
    "MQTT_TLS_INSECURE": (c.boolean, False),
    "MQTT_KEEPALIVE": (c.integer(5, 3600), 30),
    "MQTT_TIMEOUT": (c.number(0, lo_open=True), 10.0),
    "MQTT_DISCOVERY": (c.optional(c.MQTT_PREFIX), None),
    "MQTT_STATE_INTERVAL": (c.number(0.2, 3600), 1.0),
    "CURVE_SERVER_KEY": (c.optional(c.path("the broker's .key_secret file")), None),
    "CURVE_AUTHORIZED": (c.optional(c.path("a folder of authorised .key files")), None),
    "CURVE_CLIENT_KEY": (c.optional(c.path("this host's .key_secret file")), None),
    "CURVE_SERVER_PUBLIC": (
        c.optional(c.text("the broker's public key (40 characters of Z85) or its .key file")),
        None,
    ),
    "REPLAY_PORTS": (c.optional(c.port_range), None),
}

# Per-sensor keys; the calibration ones default to the top-level value of the same name.
_SENSOR: Final[dict[str, c.Check]] = {
    "PORT": c.text("a port name like 'COM4', '/dev/ttyACM0' or 'sim://VIC'"),
    "SENSORS_ID": c.sensor_id,
    "BUDRATE": _TOP["BUDRATE"][0],
    "TIMEOUT": _TOP["TIMEOUT"][0],
    "POLLING_DELAY": _TOP["POLLING_DELAY"][0],
    "VPP": _TOP["VPP"][0],
    "OFFSET": _TOP["OFFSET"][0],
    "SNS": _TOP["SNS"][0],
    "VCC": _TOP["VCC"][0],
    "MAX_AMPS": _TOP["MAX_AMPS"][0],
    "CHANNEL": c.optional(c.integer(0, 5)),  # A0..A5 of an Uno
    "AVG": c.integer(1, 64),
    "MODE": c.choice(SENSOR_MODES),
    "MAINS_HZ": c.integer(1, 1000),  # the firmware takes whole hertz
    "AC_CYCLES": c.integer(1, 100),
    "STREAM": _TOP["STREAM"][0],
    "STREAM_HZ": _TOP["STREAM_HZ"][0],
    "READ_PIPELINE": _TOP["READ_PIPELINE"][0],
}
_SENSOR_DEFAULTS: Final = {
    "CHANNEL": None,
    "AVG": 1,
    "MODE": "dc",
    "MAINS_HZ": 50,
    "AC_CYCLES": 5,
}
_SENSOR_REQUIRED: Final = ("PORT", "SENSORS_ID")


def default_settings_path() -> Path:
    return Path(os.environ.get(ENV_SETTINGS, DEFAULT_SETTINGS))


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, validate and freeze settings; raise SettingsError naming file, key and value."""
    where = Path(path) if path is not None else default_settings_path()
    raw = _read_yaml(where)
    values = _check_top(where, raw)
    base = where.resolve().parent
    sensors = _check_sensors(where, values)
    return _build(where, base, values, sensors)


def effective_values(settings: Settings) -> dict[str, Any]:
    """Every key with the value in force, defaults filled in, SENSORS entries with what they
    inherit: what `powmon check-config` shows. Secrets are in SECRET_KEYS (mask them).

    Takes settings load_settings already validated (the file is not checked twice); raises
    SettingsError only if the file changed meanwhile.
    """
    raw = _read_yaml(settings.path)
    values = _check_top(settings.path, raw)
    values["SENSORS"] = [
        _sensor_values(settings.path, i, entry, values) for i, entry in enumerate(raw["SENSORS"])
    ]
    return values


def _read_yaml(where: Path) -> dict[str, Any]:
    try:
        text = where.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{where}: cannot read settings: {err}") from err
    try:
        data = yaml.safe_load(text)
    except RecursionError:  # PyYAML composes nested nodes recursively; found by fuzzing
        raise SettingsError(f"{where}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SettingsError(f"{where}: {at}not valid YAML: {problem}") from err
    if not isinstance(data, dict):
        raise SettingsError(
            f"{where}: expected a mapping of settings at the top level, got {type(data).__name__}"
        )
    return data


# What a message shows of a bad value: enough to recognise it, never the whole of a huge or
# alias-multiplied YAML structure (whose full repr can be exponentially long).
_SHOW: Final = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 200
_SHOW.maxlist = _SHOW.maxdict = 6
_SHOW.maxlevel = 2


def _fail(where: Path, key: str, expected: str, value: Any) -> SettingsError:
    return SettingsError(f"{where}: {key}: expected {expected}, got {_SHOW.repr(value)}")


def _check_top(where: Path, raw: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in raw:
        if key not in _TOP and key not in LEGACY_IGNORED:
            raise SettingsError(
                f"{where}: {key}: not a PowMon setting; typo? (see deploy/settings.example.yaml)"
            )
    for key, (check, default) in _TOP.items():
        if key not in raw:
            if default is c.REQUIRED:
                raise SettingsError(f"{where}: {key}: required key is missing")
            values[key] = default
            continue
        try:
            values[key] = check(raw[key])
        except c.Bad as bad:
            raise _fail(where, key, bad.expected, raw[key]) from None
    return values


def _check_sensors(where: Path, values: dict[str, Any]) -> tuple[SensorSettings, ...]:
    entries = values["SENSORS"]
    if not isinstance(entries, list) or not entries:
        raise _fail(where, "SENSORS", "a non-empty list of {PORT, SENSORS_ID} entries", entries)
    sensors = [_check_sensor(where, i, entry, values) for i, entry in enumerate(entries)]
    for kind, attr in (("SENSORS_ID", "sensor_id"), ("PORT", "port")):
        seen: dict[str, int] = {}
        for i, sensor in enumerate(sensors):
            key = getattr(sensor, attr)
            if key in seen:
                raise SettingsError(
                    f"{where}: SENSORS[{i}].{kind}: expected a unique value, "
                    f"got {key!r} again (first at SENSORS[{seen[key]}])"
                )
            seen[key] = i
    return tuple(sensors)


def _check_sensor(where: Path, i: int, entry: Any, top: dict[str, Any]) -> SensorSettings:
    got = _sensor_values(where, i, entry, top)
    return SensorSettings(
        sensor_id=got["SENSORS_ID"], port=got["PORT"], baudrate=got["BUDRATE"],
        timeout=got["TIMEOUT"], polling_delay=got["POLLING_DELAY"], vpp=got["VPP"],
        offset=got["OFFSET"], sns=got["SNS"], vcc=got["VCC"], max_amps=got["MAX_AMPS"],
        channel=got["CHANNEL"], avg=got["AVG"], mode=got["MODE"], mains_hz=got["MAINS_HZ"],
        ac_cycles=got["AC_CYCLES"], stream=got["STREAM"], stream_hz=got["STREAM_HZ"],
        read_pipeline=got["READ_PIPELINE"],
    )


def _sensor_values(where: Path, i: int, entry: Any, top: dict[str, Any]) -> dict[str, Any]:
    """One SENSORS entry checked, with every key it does not set inherited or defaulted."""
    at = f"SENSORS[{i}]"
    if not isinstance(entry, dict):
        raise _fail(where, at, "a mapping with PORT and SENSORS_ID", entry)
    for key in entry:
        if key not in _SENSOR:
            known = ", ".join(_SENSOR)
            raise SettingsError(
                f"{where}: {at}.{key}: not a sensor setting (known: {known}); typo?"
            )
    for key in _SENSOR_REQUIRED:
        if key not in entry:
            raise SettingsError(f"{where}: {at}.{key}: required key is missing")
    got: dict[str, Any] = {}
    for key, check in _SENSOR.items():
        if key in entry:
            try:
                got[key] = check(entry[key])
            except c.Bad as bad:
                raise _fail(where, f"{at}.{key}", bad.expected, entry[key]) from None
        else:
            got[key] = _SENSOR_DEFAULTS[key] if key in _SENSOR_DEFAULTS else top[key]
    return got


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _secret(value: str | None) -> Secret | None:
    return None if value is None else Secret(value)


def _build(
    where: Path, base: Path, v: dict[str, Any], sensors: tuple[SensorSettings, ...]
) -> Settings:
    data_root = _resolve(base, v["LOCAL_DATA_ROOT"])
    if v["REMOTE_SAVE"] and not (v["UPLINK_URL"] or v["HOST"]):
        raise SettingsError(
            f"{where}: REMOTE_SAVE: is true, but neither UPLINK_URL nor HOST says where to send "
            "readings"
        )
    if v["REMOTE_SAVE"] and v["UPLINK_FORMAT"] == "influx":
        _check_influx(where, v)
    verify = v["UPLINK_VERIFY_TLS"]
    uplink = UplinkSettings(
        url=v["UPLINK_URL"], host_token=v["HOST"], legacy_key=_secret(v["LOCAL_DATA_PATH"]),
        key_env=v["HOST_KEY_ENV"],
        key_file=_resolve(base, v["HOST_KEY_FILE"]) if v["HOST_KEY_FILE"] else None,
        format=v["UPLINK_FORMAT"], batch_size=v["UPLINK_BATCH_SIZE"],
        batch_wait=v["UPLINK_BATCH_WAIT"], timeout=v["UPLINK_TIMEOUT"],
        backoff_max=v["UPLINK_BACKOFF_MAX"],
        spool_path=_resolve(data_root, v["UPLINK_SPOOL"]), spool_max=v["UPLINK_SPOOL_MAX"],
        verify_tls=verify if isinstance(verify, bool) else _resolve(base, verify),
        token=_secret(v["UPLINK_TOKEN"]), headers=dict(v["UPLINK_HEADERS"]),
        influx_org=v["INFLUX_ORG"], influx_bucket=v["INFLUX_BUCKET"],
        influx_database=v["INFLUX_DATABASE"], influx_token=_secret(v["INFLUX_TOKEN"]),
        influx_measurement=v["INFLUX_MEASUREMENT"],
    )
    return Settings(
        path=where.resolve(), sensors=sensors, data_root=data_root,
        data_file=v["LOCAL_DATA_FILE"].lstrip("/"), file_size_limit=v["FILE_SIZE_LIMIT"],
        log_level=v["LOG_LEVEL"], remote_save=v["REMOTE_SAVE"], sync_write=v["SYNC_WRITE"],
        broker_frontend=v["BROKER_FRONTEND"], broker_backend=v["BROKER_BACKEND"], hwm=v["HWM"],
        heartbeat_interval=v["HEARTBEAT_INTERVAL"], stall_timeout=v["STALL_TIMEOUT"],
        flush_interval=v["FLUSH_INTERVAL"], replay_buffer=v["REPLAY_BUFFER"],
        restart_backoff_max=v["RESTART_BACKOFF_MAX"], uplink=uplink,
        web_listen=v["WEB_LISTEN"], web_token=_secret(v["WEB_TOKEN"]),
        mqtt=_mqtt(where, base, v), curve=_curve(where, base, v),
        replay_ports=v["REPLAY_PORTS"],
    )


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


def _mqtt(where: Path, base: Path, v: dict[str, Any]) -> MqttSettings:
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
    if v["MQTT_KEYFILE"] and not v["MQTT_CERTFILE"]:
        raise SettingsError(f"{where}: MQTT_KEYFILE: needs MQTT_CERTFILE (the client certificate)")

    def path(key: str) -> Path | None:
        return _resolve(base, v[key]) if v[key] else None

    return MqttSettings(
        url=_secret(url), topic=v["MQTT_TOPIC"], client_id=v["MQTT_CLIENT_ID"],
        username=v["MQTT_USERNAME"], password=_secret(v["MQTT_PASSWORD"]),
        ca_certs=path("MQTT_CA_CERTS"), certfile=path("MQTT_CERTFILE"),
        keyfile=path("MQTT_KEYFILE"), tls_insecure=v["MQTT_TLS_INSECURE"],
        keepalive=v["MQTT_KEEPALIVE"], timeout=v["MQTT_TIMEOUT"],
        discovery=v["MQTT_DISCOVERY"], state_interval=v["MQTT_STATE_INTERVAL"],
    )


_CURVE_HOW: Final = (
    "set CURVE_SERVER_KEY and CURVE_AUTHORIZED on the broker's host, CURVE_CLIENT_KEY and "
    "CURVE_SERVER_PUBLIC on the other hosts (docs/hosts.md)"
)


def _curve(where: Path, base: Path, v: dict[str, Any]) -> Curve | None:
    """The bus's CURVE keys: one pair per host (the broker's on its host, a client pair on the
    others); required as soon as an endpoint is reachable from other hosts."""
    given = [k for k in ("CURVE_SERVER_KEY", "CURVE_CLIENT_KEY", "CURVE_SERVER_PUBLIC") if v[k]]
    if not given:
        _check_no_curve(where, v)
        return None
    authorized = _resolve(base, v["CURVE_AUTHORIZED"]) if v["CURVE_AUTHORIZED"] else None
    if authorized is not None:
        check_folder(authorized, "CURVE_AUTHORIZED")
    if v["CURVE_SERVER_KEY"]:
        return _server_curve(where, base, v, authorized)
    for key in ("CURVE_CLIENT_KEY", "CURVE_SERVER_PUBLIC"):
        if not v[key]:
            raise SettingsError(
                f"{where}: {key}: required with {given[0]} on a host whose broker runs "
                "elsewhere (CURVE_CLIENT_KEY: this host's .key_secret file; "
                "CURVE_SERVER_PUBLIC: the broker's public key)"
            )
    pair = load_pair(_resolve(base, v["CURVE_CLIENT_KEY"]), "CURVE_CLIENT_KEY")
    text = v["CURVE_SERVER_PUBLIC"]
    server = load_public(text, _resolve(base, text), "CURVE_SERVER_PUBLIC")
    return Curve(pair, server, broker_here=False, authorized=authorized)


def _check_no_curve(where: Path, v: dict[str, Any]) -> None:
    for key in ("BROKER_FRONTEND", "BROKER_BACKEND"):
        if not is_local_endpoint(v[key]):
            raise SettingsError(
                f"{where}: {key}: {v[key]} is reachable from other hosts, so the bus needs "
                f"CURVE: {_CURVE_HOW}"
            )
    if v["CURVE_AUTHORIZED"]:
        raise SettingsError(f"{where}: CURVE_AUTHORIZED: set, but no key pair: {_CURVE_HOW}")


def _server_curve(where: Path, base: Path, v: dict[str, Any], authorized: Path | None) -> Curve:
    for key in ("CURVE_CLIENT_KEY", "CURVE_SERVER_PUBLIC"):
        if v[key]:
            raise SettingsError(
                f"{where}: {key}: not for the broker's host, which has CURVE_SERVER_KEY "
                "(its processes use the broker's key pair); set one or the other"
            )
    if authorized is None:
        raise SettingsError(
            f"{where}: CURVE_AUTHORIZED: required with CURVE_SERVER_KEY (the folder of the "
            "public keys of the hosts admitted on the bus)"
        )
    pair = load_pair(_resolve(base, v["CURVE_SERVER_KEY"]), "CURVE_SERVER_KEY")
    return Curve(pair, pair.public, broker_here=True, authorized=authorized)
