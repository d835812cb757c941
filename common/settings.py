"""settings.yaml, loaded once, validated completely, and frozen.

Every check happens here, before any process opens a port or a socket, so that a typo stops the
program with a line naming the file, the key, what was expected and what was found, instead of
a traceback minutes later. Every mistake of a file is found in one pass (SettingsProblems, with
the line of each), so that `powmon check-config` can list them all at once. The original
script's keys load unchanged (misspelled BUDRATE included); new keys sit beside them. Nothing in
PowMon ever writes this file.
"""

from __future__ import annotations

import difflib
import os
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from powmon.common import checks as c
from powmon.common.curve import Curve, check_folder, is_local_endpoint, load_pair, load_public
from powmon.common.errors import SettingsError

T = TypeVar("T")

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
    publish_interval: float = 0.1  # PUBLISH_INTERVAL: longest a reading waits to be published

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
    "PUBLISH_INTERVAL": (c.number(0, 5), 0.1),
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
    "PUBLISH_INTERVAL": _TOP["PUBLISH_INTERVAL"][0],
}
_SENSOR_DEFAULTS: Final = {
    "CHANNEL": None,
    "AVG": 1,
    "MODE": "dc",
    "MAINS_HZ": 50,
    "AC_CYCLES": 5,
}
_SENSOR_REQUIRED: Final = ("PORT", "SENSORS_ID")


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a settings file, worded as the loader has always worded it ("KEY:
    expected ..., got ..."), with the line YAML puts it on, so `powmon check-config` can point
    at it (None: a key YAML gives no line for, or a mistake of the file as a whole)."""

    where: Path
    line: int | None
    text: str
    named: bool = False  # the text starts with a file of its own (a key file), not `where`

    def __str__(self) -> str:
        return self.text if self.named else f"{self.where}: {self.text}"

    def located(self) -> str:
        """'settings.yaml:12: KEY: ...', the form editors and compilers use."""
        return str(self) if self.line is None else f"{self.where}:{self.line}: {self.text}"


class SettingsProblems(SettingsError):
    """Every mistake of one settings file, so that a file with five needs one fix, not five
    runs. Its message stays one line, as every entry point prints it: the first mistake (by
    line), and how many more there are; `problems` holds them all, for check-config."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda p: (p.line is None, p.line or 0)))
        first, more = str(self.problems[0]), len(self.problems) - 1
        if more:
            first += f" (and {more} more problem(s): 'powmon check-config' lists them all)"
        super().__init__(first)


class _Found:
    """The problems found so far, and the keys that failed their own check (whose values the
    checks of several keys together must not trust)."""

    def __init__(self, where: Path, lines: Mapping[str, int]) -> None:
        self.where = where
        self.lines = lines
        self.problems: list[Problem] = []
        self.bad: set[str] = set()

    def add(self, key: str, text: str) -> None:
        self.bad.add(key)
        self.problems.append(Problem(self.where, self._line(key), f"{key}: {text}"))

    def fail(self, key: str, expected: str, value: Any) -> None:
        self.add(key, f"expected {expected}, got {_SHOW.repr(value)}")

    def error(self, err: SettingsError) -> None:
        """A cross-key check's SettingsError, kept as one problem among the others."""
        message, prefix = str(err), f"{self.where}: "
        text = message.removeprefix(prefix)
        key = next((part for part in text.split(": ") if part in _TOP), text.split(":")[0])
        line = self._line(key)
        self.problems.append(Problem(self.where, line, text, named=text == message))

    def trusts(self, *keys: str) -> bool:
        return not self.bad.intersection(keys)

    def _line(self, key: str) -> int | None:
        while key:  # SENSORS[1].PORT, else SENSORS[1], else SENSORS
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0] if "." in key else key.rpartition("[")[0]
        return None

    def raise_any(self) -> None:
        if self.problems:
            raise SettingsProblems(self.problems)


def default_settings_path() -> Path:
    return Path(os.environ.get(ENV_SETTINGS, DEFAULT_SETTINGS))


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, validate and freeze settings. Every mistake of the file is found before any is
    reported (SettingsProblems); an unreadable or non-YAML file is one SettingsError."""
    where = Path(path) if path is not None else default_settings_path()
    raw, lines = _read_yaml(where)
    found = _Found(where, lines)
    values = _check_top(found, raw)
    base = where.resolve().parent
    sensors = _check_sensors(found, values) if found.trusts("SENSORS") else ()
    _check_together(found, values)
    curve = _run(
        found, ("BROKER_FRONTEND", "BROKER_BACKEND", *_CURVE_KEYS), _curve, where, base, values
    )
    found.raise_any()
    return _build(where, base, values, sensors, curve)


def effective_values(settings: Settings) -> dict[str, Any]:
    """Every key with the value in force, defaults filled in, SENSORS entries with what they
    inherit: what `powmon check-config` shows. Secrets are in SECRET_KEYS (mask them).

    Takes settings load_settings already validated (the file is not checked twice); raises
    SettingsError only if the file changed meanwhile.
    """
    raw, lines = _read_yaml(settings.path)
    found = _Found(settings.path, lines)
    values = _check_top(found, raw)
    found.raise_any()
    entries = [_sensor_values(found, i, e, values) for i, e in enumerate(raw["SENSORS"])]
    found.raise_any()
    values["SENSORS"] = entries
    return values


def _read_yaml(where: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The parsed file, and the line of each top-level key and SENSORS entry."""
    try:
        text = where.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{where}: cannot read settings: {err}") from err
    try:
        data = yaml.safe_load(text)
    except RecursionError:  # PyYAML composes nested nodes recursively; found by fuzzing
        raise SettingsError(f"{where}: not valid YAML: nested too deeply") from None
    except yaml.reader.ReaderError as err:  # a character YAML forbids; its str() is two lines
        line = text.count("\n", 0, err.position) + 1
        raise SettingsError(
            f"{where}: line {line}: not valid YAML: character #x{err.character:04x}: {err.reason}"
        ) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SettingsError(f"{where}: {at}not valid YAML: {problem}") from err
    if not isinstance(data, dict):
        raise SettingsError(
            f"{where}: expected a mapping of settings at the top level, got {type(data).__name__}"
        )
    return data, _lines(text)


def _lines(text: str) -> dict[str, int]:
    """1-based lines of the top-level keys ('BUDRATE'), the SENSORS entries ('SENSORS[1]')
    and their keys ('SENSORS[1].PORT'), from the marks of YAML's nodes (safe_load drops
    them). Keys YAML does not read as plain strings get none."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):  # safe_load read it; be safe all the same
        return {}
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        lines[key.value] = key.start_mark.line + 1
        if key.value != "SENSORS" or not isinstance(value, yaml.SequenceNode):
            continue
        for i, entry in enumerate(value.value):
            lines[f"SENSORS[{i}]"] = entry.start_mark.line + 1
            if isinstance(entry, yaml.MappingNode):
                for sub, _ in entry.value:
                    if isinstance(sub, yaml.ScalarNode):
                        lines[f"SENSORS[{i}].{sub.value}"] = sub.start_mark.line + 1
    return lines


# What a message shows of a bad value: enough to recognise it, never the whole of a huge or
# alias-multiplied YAML structure (whose full repr can be exponentially long).
_SHOW: Final = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 200
_SHOW.maxlist = _SHOW.maxdict = 6
_SHOW.maxlevel = 2


def _key(key: Any) -> str:
    """A key as a message shows it: as written, or its repr if that would break the line."""
    return key if isinstance(key, str) and key.isprintable() else _SHOW.repr(key)


def _unknown(key: Any) -> str:
    """What to say of a top-level key PowMon does not know: the nearest known key, if one is
    close (a misspelling, or lower case), since the key table is long to read through."""
    near = difflib.get_close_matches(key.upper(), _TOP, n=1) if isinstance(key, str) else []
    hint = f"did you mean {near[0]}?" if near else "typo?"
    return f"not a PowMon setting; {hint} (see deploy/settings.example.yaml)"


def _check_top(found: _Found, raw: dict[str, Any]) -> dict[str, Any]:
    """Each top-level key against its check. A key that fails keeps its default in the
    result, so that sensors can still inherit from it and be checked themselves."""
    values: dict[str, Any] = {}
    for key in raw:
        if key not in _TOP and key not in LEGACY_IGNORED:
            found.add(_key(key), _unknown(key))
    for key, (check, default) in _TOP.items():
        if key in raw:
            try:
                values[key] = check(raw[key])
                continue
            except c.Bad as bad:
                found.fail(key, bad.expected, raw[key])
        elif default is c.REQUIRED:
            found.add(key, "required key is missing")
        if default is not c.REQUIRED:
            values[key] = default
    return values


def _check_sensors(found: _Found, values: dict[str, Any]) -> tuple[SensorSettings, ...]:
    entries = values["SENSORS"]
    if not isinstance(entries, list) or not entries:
        found.fail("SENSORS", "a non-empty list of {PORT, SENSORS_ID} entries", entries)
        return ()
    checked = [(i, _sensor_values(found, i, entry, values)) for i, entry in enumerate(entries)]
    sensors = [(i, _sensor(got)) for i, got in checked if got is not None]
    for kind, attr in (("SENSORS_ID", "sensor_id"), ("PORT", "port")):
        seen: dict[str, int] = {}
        for i, sensor in sensors:
            key = getattr(sensor, attr)
            if key in seen:
                found.add(
                    f"SENSORS[{i}].{kind}",
                    f"expected a unique value, got {key!r} again (first at SENSORS[{seen[key]}])",
                )
            seen.setdefault(key, i)
    if found.trusts("STALL_TIMEOUT"):  # by each entry's own index, failed entries skipped
        stall = values["STALL_TIMEOUT"]
        for i, sensor in sensors:
            if sensor.publish_interval * 2 > stall:  # readings count when published
                found.add(
                    f"SENSORS[{i}].PUBLISH_INTERVAL",
                    f"expected at most half of STALL_TIMEOUT ({stall:g} s), got "
                    f"{sensor.publish_interval:g}: a reader holding readings that long would "
                    "look stalled",
                )
    return tuple(sensor for _, sensor in sensors)


def _sensor(got: dict[str, Any]) -> SensorSettings:
    return SensorSettings(
        sensor_id=got["SENSORS_ID"], port=got["PORT"], baudrate=got["BUDRATE"],
        timeout=got["TIMEOUT"], polling_delay=got["POLLING_DELAY"], vpp=got["VPP"],
        offset=got["OFFSET"], sns=got["SNS"], vcc=got["VCC"], max_amps=got["MAX_AMPS"],
        channel=got["CHANNEL"], avg=got["AVG"], mode=got["MODE"], mains_hz=got["MAINS_HZ"],
        ac_cycles=got["AC_CYCLES"], stream=got["STREAM"], stream_hz=got["STREAM_HZ"],
        read_pipeline=got["READ_PIPELINE"], publish_interval=got["PUBLISH_INTERVAL"],
    )


def _sensor_values(
    found: _Found, i: int, entry: Any, top: dict[str, Any]
) -> dict[str, Any] | None:
    """One SENSORS entry checked, with every key it does not set inherited or defaulted;
    None (its problems added) if any of its keys is wrong."""
    at = f"SENSORS[{i}]"
    if not isinstance(entry, dict):
        found.fail(at, "a mapping with PORT and SENSORS_ID", entry)
        return None
    before = len(found.problems)
    for key in entry:
        if key not in _SENSOR:
            known = ", ".join(_SENSOR)
            found.add(f"{at}.{_key(key)}", f"not a sensor setting (known: {known}); typo?")
    for key in _SENSOR_REQUIRED:
        if key not in entry:
            found.add(f"{at}.{key}", "required key is missing")
    got: dict[str, Any] = {}
    for key, check in _SENSOR.items():
        if key in entry:
            try:
                got[key] = check(entry[key])
            except c.Bad as bad:
                found.fail(f"{at}.{key}", bad.expected, entry[key])
        else:
            got[key] = _SENSOR_DEFAULTS[key] if key in _SENSOR_DEFAULTS else top.get(key)
    return got if len(found.problems) == before else None


def _run(found: _Found, keys: tuple[str, ...], check: Callable[..., T], *args: Any) -> T | None:
    """A check of several keys together, only when each of them passed its own check (one
    wrong value should not also be reported as a clash); its SettingsError is kept."""
    if not found.trusts(*keys):
        return None
    try:
        return check(*args)
    except SettingsError as err:
        found.error(err)
        return None


def _check_together(found: _Found, v: dict[str, Any]) -> None:
    """The checks that involve more than one key, each given every key it needs valid."""
    where = found.where
    if found.trusts("REMOTE_SAVE", "UPLINK_URL", "HOST") and (
        v["REMOTE_SAVE"] and not (v["UPLINK_URL"] or v["HOST"])
    ):
        found.add(
            "REMOTE_SAVE",
            "is true, but neither UPLINK_URL nor HOST says where to send readings",
        )
    if v["REMOTE_SAVE"] and v["UPLINK_FORMAT"] == "influx":
        _run(found, ("REMOTE_SAVE", "UPLINK_FORMAT", *_INFLUX_KEYS), _check_influx, where, v)
    _run(found, _MQTT_KEYS, _check_mqtt, where, v)
    _check_ports(found, v)


_BUS_KEYS: Final = ("BROKER_FRONTEND", "BROKER_BACKEND")


_Taken = list[tuple[str, str, "tuple[str, int] | str"]]  # key, as written, address


def _check_ports(found: _Found, v: dict[str, Any]) -> None:
    """No two of the bus endpoints and the web page's address may take the same port on the
    same host (the second bind would fail, the broker's own other socket taken for a foreign
    program), nor may REPLAY_PORTS include one of their ports (a reader would take it first)."""
    taken: _Taken = []
    for key in _BUS_KEYS:
        if found.trusts(key):
            taken.append((key, v[key], c.tcp_address(v[key]) or v[key]))
    if found.trusts("WEB_LISTEN") and v["WEB_LISTEN"] is not None:
        host, port = v["WEB_LISTEN"]
        taken.append(("WEB_LISTEN", f"{host}:{port}", (host, port)))
    _check_distinct(found, taken)
    if found.trusts("REPLAY_PORTS") and v["REPLAY_PORTS"] is not None:
        lo, hi = v["REPLAY_PORTS"]
        for key, shown, address in taken:
            if isinstance(address, tuple) and lo <= address[1] <= hi:
                found.add(
                    "REPLAY_PORTS",
                    f"expected ports apart from the bus and the web page's, got '{lo}-{hi}', "
                    f"which holds {key}'s port {address[1]} ({_as_set(found, key, shown)})",
                )


def _check_distinct(found: _Found, taken: _Taken) -> None:
    for n, (key, shown, address) in enumerate(taken):
        for other, other_shown, other_address in taken[:n]:
            if not _clash(address, other_address):
                continue
            pair = [(key, shown), (other, other_shown)]
            if key not in found.lines:  # name the key the file sets, not a default
                pair.reverse()
            (blame, said), (by, by_shown) = pair
            found.add(
                blame,
                f"expected a port of its own, got {said!r}, the same port on the same host as "
                f"{by} ({_as_set(found, by, by_shown)})",
            )


def _as_set(found: _Found, key: str, shown: str) -> str:
    """A value as a message recalls it, saying when it is a default the file does not set."""
    return repr(shown) if key in found.lines else f"{shown!r}, its default"


def _clash(a: tuple[str, int] | str, b: tuple[str, int] | str) -> bool:
    """Whether two addresses would be the same socket: the same ipc path, or the same port on
    the same host (a wildcard host is every host; localhost is 127.0.0.1)."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    hosts = {h.replace("localhost", "127.0.0.1") for h in (a[0], b[0])}
    return a[1] == b[1] and (len(hosts) == 1 or bool(hosts & c.WILDCARD_HOSTS))


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _secret(value: str | None) -> Secret | None:
    return None if value is None else Secret(value)


def _build(
    where: Path,
    base: Path,
    v: dict[str, Any],
    sensors: tuple[SensorSettings, ...],
    curve: Curve | None,
) -> Settings:
    """The frozen Settings, from values every check has passed."""
    data_root = _resolve(base, v["LOCAL_DATA_ROOT"])
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
        mqtt=_mqtt(base, v), curve=curve,
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


_INFLUX_KEYS: Final = ("INFLUX_ORG", "INFLUX_BUCKET", "INFLUX_DATABASE")
_MQTT_KEYS: Final = (
    "MQTT_URL", "MQTT_USERNAME", "MQTT_CA_CERTS", "MQTT_CERTFILE", "MQTT_KEYFILE",
    "MQTT_TLS_INSECURE", "MQTT_PASSWORD",
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


def _mqtt(base: Path, v: dict[str, Any]) -> MqttSettings:
    url = v["MQTT_URL"]

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


_CURVE_KEYS: Final = (
    "CURVE_SERVER_KEY", "CURVE_AUTHORIZED", "CURVE_CLIENT_KEY", "CURVE_SERVER_PUBLIC",
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
