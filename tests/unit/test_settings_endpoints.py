"""Every endpoint key is checked in the settings table: host, port 1..65535, and no two keys
on one port, so that a wrong bus address stops the load instead of starting a bus nobody
finds (port 99999 became 34463, port 0 an OS-chosen port, frontend = backend a refusal
blamed on 'another program')."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from powmon.common.errors import SettingsError
from powmon.common.settings import load_settings
from tests.helpers import write_settings

SENSOR = {"PORT": "sim://VIC", "SENSORS_ID": "VIC"}


def _load(tmp_path: Path, **overrides: Any) -> str:
    """The message of the SettingsError the file with these keys gives."""
    path = write_settings(tmp_path / "settings.yaml", [SENSOR], **overrides)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("BROKER_FRONTEND", "tcp://127.0.0.1:99999", "a port from 1 to 65535"),
        ("BROKER_BACKEND", "tcp://127.0.0.1:65536", "a port from 1 to 65535"),
        ("BROKER_FRONTEND", "tcp://127.0.0.1:0", "a fixed port from 1 to 65535"),
        ("BROKER_BACKEND", "tcp://127.0.0.1:*", "a fixed port from 1 to 65535"),
        ("BROKER_FRONTEND", "tcp://127.0.0.1:abc", "a ZeroMQ endpoint like"),
        ("BROKER_FRONTEND", "tcp://127.0.0.1", "a ZeroMQ endpoint like"),
        ("BROKER_FRONTEND", "tcp://999.0.0.1:5555", "a ZeroMQ endpoint like"),
        ("BROKER_BACKEND", "tcp://[::zz]:5555", "a ZeroMQ endpoint like"),
        ("BROKER_FRONTEND", "ipc://", "a ZeroMQ endpoint like"),
        ("BROKER_FRONTEND", "inproc://bus", "an endpoint between processes"),
    ],
)
def test_a_bad_bus_endpoint_names_its_key_and_what_is_expected(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    """A port out of range, port 0 or '*', no port, a host that is no address, an empty ipc
    path, inproc://: the key, what it takes and the value, never the CURVE advice meant for
    real remote addresses."""
    message = _load(tmp_path, **{key: value})
    assert f"{key}: expected {expected}" in message
    assert repr(value) in message
    assert "CURVE" not in message


def test_frontend_equal_to_backend_is_a_settings_error(tmp_path: Path) -> None:
    """The broker binds both: one port for both is a mistake of the file, named as such."""
    message = _load(
        tmp_path, BROKER_FRONTEND="tcp://127.0.0.1:5600", BROKER_BACKEND="tcp://127.0.0.1:5600"
    )
    assert "BROKER_BACKEND: expected a port of its own" in message
    assert "same port on the same host as BROKER_FRONTEND" in message


def test_a_frontend_on_the_default_backend_port_names_the_key_the_file_sets(
    tmp_path: Path,
) -> None:
    """The file sets BROKER_FRONTEND to the backend's default port: the message is about the
    key written in the file, and says the other value is a default."""
    path = tmp_path / "settings.yaml"
    path.write_text(
        "SENSORS: [{PORT: 'sim://VIC', SENSORS_ID: VIC}]\nBROKER_FRONTEND: tcp://localhost:5556\n",
        encoding="utf-8",
    )
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert re.search(
        r"BROKER_FRONTEND: expected a port of its own, got 'tcp://localhost:5556', .* "
        r"BROKER_BACKEND \('tcp://127.0.0.1:5556', its default\)",
        str(info.value),
    )


def test_a_wildcard_host_clashes_with_any_host_on_that_port(tmp_path: Path) -> None:
    """WEB_LISTEN on 0.0.0.0 takes the port on every address, the bus's loopback one too."""
    message = _load(
        tmp_path, BROKER_BACKEND="tcp://127.0.0.1:5601", WEB_LISTEN="0.0.0.0:5601",
        WEB_TOKEN="t",  # noqa: S106 -- a made-up token: 0.0.0.0 needs one
    )
    assert "WEB_LISTEN: expected a port of its own" in message


def test_same_port_on_two_addresses_is_allowed(tmp_path: Path) -> None:
    """Different hosts may use one port number: 127.0.0.1 and 127.0.0.2 are two sockets."""
    path = write_settings(
        tmp_path / "settings.yaml", [SENSOR],
        BROKER_FRONTEND="tcp://127.0.0.1:5602", BROKER_BACKEND="tcp://127.0.0.2:5602",
    )
    assert load_settings(path).broker_backend == "tcp://127.0.0.2:5602"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"BROKER_FRONTEND": "tcp://127.0.0.1:5610", "REPLAY_PORTS": "5600-5619"},
         "BROKER_FRONTEND's port 5610"),
        ({"BROKER_BACKEND": "tcp://127.0.0.1:5619", "REPLAY_PORTS": "5600-5619"},
         "BROKER_BACKEND's port 5619"),
        ({"WEB_LISTEN": "127.0.0.1:5600", "REPLAY_PORTS": 5600}, "WEB_LISTEN's port 5600"),
    ],
)
def test_replay_ports_must_not_hold_a_bus_or_web_port(
    tmp_path: Path, overrides: dict[str, Any], named: str
) -> None:
    """A reader binding its replay socket would take the bus's or the page's port first."""
    message = _load(tmp_path, **overrides)
    assert "REPLAY_PORTS: expected ports apart from the bus and the web page's" in message
    assert named in message


@pytest.mark.parametrize(
    ("frontend", "backend"),
    [
        ("ipc://{tmp}/front.sock", "ipc://{tmp}/back.sock"),
        ("tcp://[::1]:5620", "tcp://[::1]:5621"),
        ("tcp://localhost:5622", "ipc://{tmp}/back.sock"),
    ],
)
def test_good_endpoints_still_load(tmp_path: Path, frontend: str, backend: str) -> None:
    """ipc:// paths, bracketed IPv6 and host names keep working."""
    front, back = (e.format(tmp=tmp_path) for e in (frontend, backend))
    path = write_settings(
        tmp_path / "settings.yaml", [SENSOR], BROKER_FRONTEND=front, BROKER_BACKEND=back
    )
    settings = load_settings(path)
    assert (settings.broker_frontend, settings.broker_backend) == (front, back)


def test_two_ipc_endpoints_on_one_path_clash(tmp_path: Path) -> None:
    """One socket file cannot be both of the broker's sockets."""
    same = f"ipc://{tmp_path}/bus.sock"
    message = _load(tmp_path, BROKER_FRONTEND=same, BROKER_BACKEND=same)
    assert "BROKER_BACKEND: expected a port of its own" in message


@pytest.mark.parametrize("value", ["https://example.org:99999/api", "http://:8080/x"])
def test_uplink_url_port_and_host_are_checked(tmp_path: Path, value: str) -> None:
    """An uplink URL with a port beyond 65535 or no host fails at load, not at first upload."""
    message = _load(tmp_path, UPLINK_URL=value)
    assert "UPLINK_URL: expected an http(s) URL like" in message
