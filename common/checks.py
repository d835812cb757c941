"""Value checks for settings.yaml: each takes a raw YAML value and returns it typed, or raises
Bad with what was expected, which the loader turns into one line naming file and key.

Kept apart from the loader so that the table of keys (settings/keys.py) reads as a table.
"""

from __future__ import annotations

import ipaddress
import math
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeGuard
from urllib.parse import urlsplit


class Bad(Exception):
    """A value failed its check; carries what was expected, for the message."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


Check = Callable[[Any], Any]
REQUIRED: Final = object()


def _number(kind: str, lo: float | None, hi: float | None, *, lo_open: bool = False) -> Check:
    def check(value: Any) -> Any:
        ok_type = isinstance(value, int) if kind == "an integer" else isinstance(value, int | float)
        # NaN passes every range test (all comparisons are false) and .inf makes timers never
        # fire; an integer too large for a float would raise OverflowError further down.
        if isinstance(value, bool) or not ok_type or not _finite(value):
            raise Bad(kind + _range_text(lo, hi, lo_open))
        if (lo is not None and (value <= lo if lo_open else value < lo)) or (
            hi is not None and value > hi
        ):
            raise Bad(kind + _range_text(lo, hi, lo_open))
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


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    return _number("an integer", lo, hi)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Check:
    return _number("a number", lo, hi, lo_open=lo_open)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad("true or false")
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


def text(expected: str = "a non-empty string", pattern: str | None = None) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or not _clean(value):
            raise Bad(expected)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise Bad(expected)
        return value

    return check


def optional(inner: Check) -> Check:
    def check(value: Any) -> Any:
        return None if value is None or value == "" else inner(value)

    return check


def choice(values: tuple[str, ...]) -> Check:
    def check(value: Any) -> str:
        if value not in values:
            raise Bad("one of " + ", ".join(repr(v) for v in values))
        return str(value)

    return check


STREAM_MODES: Final = ("auto", "on", "off")
_STREAM_MODE: Final = choice(STREAM_MODES)


def stream_mode(value: Any) -> str:
    """STREAM: auto, on or off. YAML 1.1 reads a bare `on` / `off` (and yes/no) as a boolean:
    those mean on and off too, so `STREAM: off` works unquoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(_STREAM_MODE(value))


def sensor_id(value: Any) -> str:
    # The id goes into ZeroMQ topics ("reading/<id>/"), where '/' ends it; anything else is
    # fine (CSV quoting and the influx escaper handle commas, spaces and '=').
    if (
        not _clean(value)
        or not value.strip()
        or "/" in value
        or any(ord(c) < 32 for c in value)
        or len(value.encode()) > 64
    ):
        raise Bad("a sensor id like 'VIC' (no '/', no control characters, at most 64 bytes)")
    return value


def headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(_clean(k) and _clean(v) for k, v in value.items()):
        raise Bad("a mapping of header names to string values")
    return dict(value)


def verify_tls(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        checked: str = PATH(value)
        return checked
    raise Bad("true, false, or the path of a CA bundle")


def path(expected: str) -> Check:
    as_text = text(expected)

    def check(value: Any) -> str:
        checked: str = as_text(value)
        try:
            Path(checked).expanduser()
        except RuntimeError:  # '~someone' with no such user: pathlib cannot expand it
            raise Bad(f"{expected} ('~user' must name an existing user)") from None
        return checked

    return check


PATH: Final = path("a path")


def listen(value: Any) -> tuple[str, int]:
    """'host:port' (IPv6 in brackets: '[::1]:8080') -> (host, port), for an HTTP server to bind.

    Also parses `powmon web --listen`, so the option and the setting accept the same text.
    """
    pattern = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})"
    match = re.fullmatch(pattern, value) if _clean(value) else None
    if match is None or not 1 <= int(match[2]) <= 65535:
        raise Bad("host:port like '127.0.0.1:8080' (port 1 to 65535; IPv6 as '[::1]:8080')")
    return match[1].strip("[]"), int(match[2])


def port_range(value: Any) -> tuple[int, int]:
    """'5600-5619' (or one port, 5600) -> (5600, 5619)."""
    expected = "a port range like '5600-5619' (ports 1 to 65535, low to high)"
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    match = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", value) if _clean(value) else None
    if match is None:
        raise Bad(expected)
    lo, hi = int(match[1]), int(match[2] or match[1])
    if not 1 <= lo <= hi <= 65535:
        raise Bad(expected)
    return lo, hi


_ENDPOINT_TEXT: Final = (
    "a ZeroMQ endpoint like 'tcp://127.0.0.1:5555' (tcp://HOST:PORT with PORT from 1 to 65535, "
    "or ipc://PATH)"
)
# tcp://[source;]host:port, as libzmq reads it; the host as an IPv4 address, [IPv6] in
# brackets, a name (or interface), or '*' (every interface).
_TCP_ENDPOINT: Final = re.compile(
    r"tcp://(?:[^;\s]+;)?"
    r"(\*|\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r":([0-9]{1,5}|\*)"
)
WILDCARD_HOSTS: Final = frozenset({"*", "0.0.0.0", "::"})  # noqa: S104 - names, not a bind


def _host_ok(host: str) -> bool:
    """An address that parses (999.1.1.1 does not), or a name: libzmq would otherwise fail
    only when the broker binds, after everything else has started."""
    if host.startswith("["):
        inner = host[1:-1]
    elif re.fullmatch(r"[0-9.]+", host):
        inner = host
    else:
        return True
    try:
        ipaddress.ip_address(inner)
    except ValueError:
        return False
    return True


def tcp_address(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of a checked tcp:// endpoint (IPv6 without brackets); None for ipc://."""
    match = _TCP_ENDPOINT.fullmatch(endpoint)
    if match is None or match[2] == "*":
        return None
    return match[1].strip("[]"), int(match[2])


def endpoint(value: Any) -> str:
    """A bus endpoint every process can find: tcp://HOST:PORT with a real port, or ipc://PATH.

    Port 0 or '*' lets the OS pick the port when the broker binds, which no other process can
    know; a port beyond 65535 was silently taken modulo 65536 by libzmq. inproc:// reaches
    only its own process, and the bus joins separate processes.
    """
    if not _clean(value):
        raise Bad(_ENDPOINT_TEXT)
    if value.startswith("ipc://"):
        if not value[len("ipc://") :].strip() or re.search(r"\s", value):
            raise Bad(_ENDPOINT_TEXT)
        return value
    if value.startswith("inproc://"):
        raise Bad(
            "an endpoint between processes, tcp://HOST:PORT or ipc://PATH (inproc:// reaches "
            "only its own process)"
        )
    match = _TCP_ENDPOINT.fullmatch(value)
    if match is None or not _host_ok(match[1]):
        raise Bad(_ENDPOINT_TEXT)
    if match[2] == "*" or int(match[2]) == 0:
        raise Bad(
            "a fixed port from 1 to 65535, as in 'tcp://127.0.0.1:5555' (with 0 or '*' the OS "
            "picks one, which no other process can find)"
        )
    if int(match[2]) > 65535:
        raise Bad("a port from 1 to 65535, as in 'tcp://127.0.0.1:5555'")
    return value


ENDPOINT: Final = endpoint
_URL_TEXT: Final = "an http(s) URL like 'https://example.org/api' (a port from 1 to 65535)"
_URL_SHAPE: Final = text(_URL_TEXT, r"https?://\S+")


def url(value: Any) -> str:
    """An http(s) URL with a host and, if it gives one, a port the uplink can connect to (a
    port beyond 65535 would only fail at the first upload, long after start-up)."""
    checked: str = _URL_SHAPE(value)
    try:
        parts = urlsplit(checked)
        port = parts.port  # ValueError beyond 65535
    except ValueError:
        raise Bad(_URL_TEXT) from None
    if not parts.hostname or port == 0:
        raise Bad(_URL_TEXT)
    return checked


URL: Final = url


MQTT_SCHEMES: Final = {"mqtt": 1883, "mqtts": 8883}
_TOPIC_FIELDS: Final = frozenset({"sensor_id", "session"})


def mqtt_url(value: Any) -> str:
    """mqtt://host[:port] or mqtts://host[:port], optionally user[:password]@ before the host."""
    expected = "an MQTT URL like 'mqtt://127.0.0.1:1883' or 'mqtts://broker.example.org'"
    checked: str = text(expected)(value)
    try:
        parts = urlsplit(checked)
        port = parts.port
    except ValueError:
        raise Bad(expected) from None
    if (
        parts.scheme not in MQTT_SCHEMES
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or (port is not None and not 0 < port < 65536)
    ):
        raise Bad(expected)
    return checked


def mqtt_topic(value: Any) -> str:
    """A topic template: MQTT topic characters (no wildcards), placeholders {sensor_id} and
    {session} only."""
    expected = "an MQTT topic like 'powmon/{sensor_id}' (placeholders: {sensor_id}, {session}; "
    expected += "no '+' or '#'; not starting with '$')"
    checked: str = text(expected)(value)
    try:
        pieces = list(string.Formatter().parse(checked))
    except ValueError:
        raise Bad(expected) from None
    for literal, name, spec, conversion in pieces:
        if "+" in literal or "#" in literal:
            raise Bad(expected)
        if name is not None and (name not in _TOPIC_FIELDS or spec or conversion):
            raise Bad(expected)
    if checked.startswith("$") or len(checked.encode()) > 65535:
        raise Bad(expected)
    return checked


MQTT_PREFIX = text(
    "an MQTT topic prefix like 'homeassistant' (no '+', '#' or spaces)", r"[^$#+\s][^#+\s]*"
)
