"""settings.yaml, loaded once, validated completely, and frozen.

Every check happens here, before any process opens a port or a socket, so that a typo stops the
program with one line naming the file, the key, what was expected and what was found, instead of
a traceback minutes later. The original script's keys load unchanged (misspelled BUDRATE
included); new keys sit beside them. Nothing in PowMon ever writes this file.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeGuard

import yaml

from powmon.common.errors import SettingsError

ENV_SETTINGS: Final = "POWMON_SETTINGS"
DEFAULT_SETTINGS: Final = "settings.yaml"
UPLINK_FORMATS: Final = ("seed", "csv", "json", "influx")
SENSOR_MODES: Final = ("dc", "ac")

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


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """Where and how readings go to the remote server (used only when REMOTE_SAVE is true)."""

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
    influx_token: Secret | None
    influx_measurement: str


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

    def sensor(self, sensor_id: str) -> SensorSettings:
        for sensor in self.sensors:
            if sensor.sensor_id == sensor_id:
                return sensor
        known = ", ".join(repr(s.sensor_id) for s in self.sensors)
        raise SettingsError(f"{self.path}: SENSORS: no sensor {sensor_id!r} (known: {known})")


class _Bad(Exception):
    """A value failed its check; carries what was expected, for the message."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


Check = Callable[[Any], Any]
_REQUIRED: Final = object()


def _number(kind: str, lo: float | None, hi: float | None, *, lo_open: bool = False) -> Check:
    def check(value: Any) -> Any:
        ok_type = isinstance(value, int) if kind == "an integer" else isinstance(value, int | float)
        # NaN passes every range test (all comparisons are false) and .inf makes timers never
        # fire; an integer too large for a float would raise OverflowError further down.
        if isinstance(value, bool) or not ok_type or not _finite(value):
            raise _Bad(kind + _range_text(lo, hi, lo_open))
        if (lo is not None and (value <= lo if lo_open else value < lo)) or (
            hi is not None and value > hi
        ):
            raise _Bad(kind + _range_text(lo, hi, lo_open))
        return value if kind == "an integer" else float(value)

    return check


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _range_text(lo: float | None, hi: float | None, lo_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" from {lo:g} to {hi:g}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    return ""


def _int(lo: int | None = None, hi: int | None = None) -> Check:
    return _number("an integer", lo, hi)


def _float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Check:
    return _number("a number", lo, hi, lo_open=lo_open)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad("true or false")
    return value


def _clean(value: Any) -> TypeGuard[str]:
    """A string that can go into a file name, a URL or a log line: no NUL, valid UTF-8.

    YAML's "\\0" and "\\ud800" escapes make strings that are neither; found by fuzzing, they
    crashed the loader (UnicodeEncodeError) or the writer later (ValueError from the OS layer).
    """
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(expected: str = "a non-empty string", pattern: str | None = None) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or not _clean(value):
            raise _Bad(expected)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise _Bad(expected)
        return value

    return check


def _optional(inner: Check) -> Check:
    def check(value: Any) -> Any:
        return None if value is None or value == "" else inner(value)

    return check


def _choice(values: tuple[str, ...]) -> Check:
    def check(value: Any) -> str:
        if value not in values:
            raise _Bad("one of " + ", ".join(repr(v) for v in values))
        return str(value)

    return check


def _sensor_id(value: Any) -> str:
    # The id goes into ZeroMQ topics ("reading/<id>/"), where '/' ends it; anything else is
    # fine (CSV quoting and the influx escaper handle commas, spaces and '=').
    if (
        not _clean(value)
        or not value.strip()
        or "/" in value
        or any(ord(c) < 32 for c in value)
        or len(value.encode()) > 64
    ):
        raise _Bad("a sensor id like 'VIC' (no '/', no control characters, at most 64 bytes)")
    return value


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(_clean(k) and _clean(v) for k, v in value.items()):
        raise _Bad("a mapping of header names to string values")
    return dict(value)


def _verify_tls(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        path: str = _PATH(value)
        return path
    raise _Bad("true, false, or the path of a CA bundle")


def _path(expected: str) -> Check:
    text = _text(expected)

    def check(value: Any) -> str:
        path: str = text(value)
        try:
            Path(path).expanduser()
        except RuntimeError:  # '~someone' with no such user: pathlib cannot expand it
            raise _Bad(f"{expected} ('~user' must name an existing user)") from None
        return path

    return check


_PATH: Final = _path("a path")


_ENDPOINT = _text("a ZeroMQ endpoint like 'tcp://127.0.0.1:5555'", r"(tcp|ipc|inproc)://\S+")
_URL = _text("an http(s) URL like 'https://example.org/api'", r"https?://\S+")

# Original keys first, then PowMon's additions. key -> (check, default)
_TOP: Final[dict[str, tuple[Check, Any]]] = {
    "SENSORS": (lambda v: v, _REQUIRED),
    "BUDRATE": (_int(1), 9600),
    "TIMEOUT": (_float(0, lo_open=True), 1.0),
    "POLLING_DELAY": (_float(0), 0.1),
    "FILE_SIZE_LIMIT": (_int(1024), 10_000_000),
    "LOCAL_DATA_ROOT": (_path("a folder path"), "data"),
    "LOCAL_DATA_FILE": (_text("a file name like 'data.csv'", r"/?[^/\\]+"), "data.csv"),
    "LOG_LEVEL": (_int(0, 3), 1),
    "REMOTE_SAVE": (_bool, False),
    "SYNC_WRITE": (_bool, True),
    "VPP": (_float(0, lo_open=True), 5.0 / 1024),
    "OFFSET": (_float(), 2.5),
    "SNS": (_float(0, lo_open=True), 0.066),
    "VCC": (_float(), 5.0),
    "HOST": (_optional(_text("a Fernet token (from 'powmon encrypt-url')")), None),
    "LOCAL_DATA_PATH": (_optional(_text("a Fernet key (from 'powmon keygen')")), None),
    "MAX_AMPS": (_float(0, lo_open=True), 10.0),
    "BROKER_FRONTEND": (_ENDPOINT, "tcp://127.0.0.1:5555"),
    "BROKER_BACKEND": (_ENDPOINT, "tcp://127.0.0.1:5556"),
    "HWM": (_int(1000), 200_000),
    "HEARTBEAT_INTERVAL": (_float(0.05, 60), 1.0),
    "STALL_TIMEOUT": (_float(1), 15.0),
    "FLUSH_INTERVAL": (_float(0.01, 1.0), 0.5),
    "REPLAY_BUFFER": (_int(0), 60_000),
    "RESTART_BACKOFF_MAX": (_float(0.1), 30.0),
    "UPLINK_URL": (_optional(_URL), None),
    "HOST_KEY_ENV": (
        _text("an environment variable name", r"[A-Za-z_][A-Za-z0-9_]*"),
        "POWMON_HOST_KEY",
    ),
    "HOST_KEY_FILE": (_optional(_PATH), None),
    "UPLINK_FORMAT": (_choice(UPLINK_FORMATS), "seed"),
    "UPLINK_BATCH_SIZE": (_int(1, 100_000), 500),
    "UPLINK_BATCH_WAIT": (_float(0), 1.0),
    "UPLINK_TIMEOUT": (_float(0, lo_open=True), 5.0),
    "UPLINK_BACKOFF_MAX": (_float(0.1), 60.0),
    "UPLINK_SPOOL": (_PATH, "uplink-spool.sqlite3"),
    "UPLINK_SPOOL_MAX": (_int(1000), 5_000_000),
    "UPLINK_VERIFY_TLS": (_verify_tls, True),
    "UPLINK_TOKEN": (_optional(_text()), None),
    "UPLINK_HEADERS": (_headers, {}),
    "INFLUX_ORG": (_optional(_text()), None),
    "INFLUX_BUCKET": (_optional(_text()), None),
    "INFLUX_TOKEN": (_optional(_text()), None),
    "INFLUX_MEASUREMENT": (_text(), "power"),
}

# Per-sensor keys; the calibration ones default to the top-level value of the same name.
_SENSOR: Final[dict[str, Check]] = {
    "PORT": _text("a port name like 'COM4', '/dev/ttyACM0' or 'sim://VIC'"),
    "SENSORS_ID": _sensor_id,
    "BUDRATE": _TOP["BUDRATE"][0],
    "TIMEOUT": _TOP["TIMEOUT"][0],
    "POLLING_DELAY": _TOP["POLLING_DELAY"][0],
    "VPP": _TOP["VPP"][0],
    "OFFSET": _TOP["OFFSET"][0],
    "SNS": _TOP["SNS"][0],
    "VCC": _TOP["VCC"][0],
    "MAX_AMPS": _TOP["MAX_AMPS"][0],
    "CHANNEL": _optional(_int(0, 5)),  # A0..A5 of an Uno
    "AVG": _int(1, 64),
    "MODE": _choice(SENSOR_MODES),
    "MAINS_HZ": _int(1, 1000),  # the firmware takes whole hertz
    "AC_CYCLES": _int(1, 100),
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
            if default is _REQUIRED:
                raise SettingsError(f"{where}: {key}: required key is missing")
            values[key] = default
            continue
        try:
            values[key] = check(raw[key])
        except _Bad as bad:
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
            except _Bad as bad:
                raise _fail(where, f"{at}.{key}", bad.expected, entry[key]) from None
        else:
            got[key] = _SENSOR_DEFAULTS[key] if key in _SENSOR_DEFAULTS else top[key]
    return SensorSettings(
        sensor_id=got["SENSORS_ID"], port=got["PORT"], baudrate=got["BUDRATE"],
        timeout=got["TIMEOUT"], polling_delay=got["POLLING_DELAY"], vpp=got["VPP"],
        offset=got["OFFSET"], sns=got["SNS"], vcc=got["VCC"], max_amps=got["MAX_AMPS"],
        channel=got["CHANNEL"], avg=got["AVG"], mode=got["MODE"], mains_hz=got["MAINS_HZ"],
        ac_cycles=got["AC_CYCLES"],
    )  # fmt: skip


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
        for key in ("INFLUX_ORG", "INFLUX_BUCKET"):
            if not v[key]:
                raise SettingsError(f"{where}: {key}: required when UPLINK_FORMAT is 'influx'")
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
        influx_token=_secret(v["INFLUX_TOKEN"]), influx_measurement=v["INFLUX_MEASUREMENT"],
    )  # fmt: skip
    return Settings(
        path=where.resolve(), sensors=sensors, data_root=data_root,
        data_file=v["LOCAL_DATA_FILE"].lstrip("/"), file_size_limit=v["FILE_SIZE_LIMIT"],
        log_level=v["LOG_LEVEL"], remote_save=v["REMOTE_SAVE"], sync_write=v["SYNC_WRITE"],
        broker_frontend=v["BROKER_FRONTEND"], broker_backend=v["BROKER_BACKEND"], hwm=v["HWM"],
        heartbeat_interval=v["HEARTBEAT_INTERVAL"], stall_timeout=v["STALL_TIMEOUT"],
        flush_interval=v["FLUSH_INTERVAL"], replay_buffer=v["REPLAY_BUFFER"],
        restart_backoff_max=v["RESTART_BACKOFF_MAX"], uplink=uplink,
    )  # fmt: skip
