"""The server address: keygen / encrypt-url, key sources in order, and clear errors."""

from __future__ import annotations

import itertools
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from click.testing import CliRunner
from cryptography.fernet import Fernet

from powmon.common.errors import SettingsError
from powmon.common.settings import Settings, load_settings
from powmon.keys import encrypt_url_command, keygen_command
from powmon.uplink.config import UplinkConfig
from powmon.uplink.http_output import HttpConfig
from powmon.uplink.influx import influx_config, influx_v1_write_url, influx_write_url
from powmon.uplink.server_url import resolve_url
from tests.helpers import Proc, wait_until, write_settings
from tests.httpserver import RecordingServer
from tests.uplinkrun import UplinkRun

URL = "https://data.example.org/api/ingest?site=7"
posix_only = pytest.mark.skipif(os.name == "nt", reason="file modes are POSIX")


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"REMOTE_SAVE": True, **overrides}
    path = write_settings(tmp_path / "settings.yaml", [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}],
                          **values)
    return load_settings(path)


def make_key_file(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "host.key"
    result = CliRunner().invoke(keygen_command, ["--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, out.read_text().strip()


@posix_only
def test_keygen_writes_an_owner_only_key_file(tmp_path: Path) -> None:
    """`powmon keygen --out F` makes a valid Fernet key with mode 0600, and never overwrites."""
    out, key = make_key_file(tmp_path)
    Fernet(key.encode())  # a valid key, or this raises
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = CliRunner().invoke(keygen_command, ["--out", str(out)])
    assert again.exit_code == 2
    assert "already exists" in again.output
    assert out.read_text().strip() == key


def test_keygen_prints_a_key_without_out() -> None:
    """Without --out the key goes to stdout, for a secrets manager or an env var."""
    result = CliRunner().invoke(keygen_command, [])
    assert result.exit_code == 0
    Fernet(result.output.strip().encode())


@pytest.mark.e2e
def test_encrypt_url_round_trips_through_the_uplink(
    tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
    zmq_ctx: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """encrypt-url with --key-file gives a HOST token; a real uplink process with that HOST
    and HOST_KEY_FILE (no UPLINK_URL) delivers readings to the URL it decrypts."""
    monkeypatch.delenv("POWMON_HOST_KEY", raising=False)  # it would win over the key file
    key_file, _ = make_key_file(tmp_path)
    with RecordingServer(path="/api/ingest") as server:
        result = CliRunner().invoke(encrypt_url_command, [server.url, "--key-file", str(key_file)])
        assert result.exit_code == 0, result.output
        token = result.output.strip()
        assert server.url not in result.output
        run = UplinkRun(tmp_path, spawn, broker, zmq_ctx, REMOTE_SAVE=True, HOST=token,
                        HOST_KEY_FILE=str(key_file), UPLINK_FORMAT="json",
                        UPLINK_BATCH_WAIT=0.1)
        seqs = itertools.count()

        def delivered() -> bool:  # the first readings may go before the uplink listens
            run.publish("round", [next(seqs)])
            return bool(server.delivered())

        try:
            wait_until(delivered, 30, interval=0.05, what="a reading at the decrypted URL")
        finally:
            run.pub.close()
            run.status_sub.close()
        assert {rec.path for rec in server.delivered()} == {"/api/ingest"}
        assert run.uplink.stop() == 0
    assert f"HOST decrypted with the key from {key_file}" in run.uplink.output()


def test_encrypt_url_takes_the_key_from_the_environment(tmp_path: Path) -> None:
    """The key can come from $POWMON_HOST_KEY; the env var wins over a key file."""
    key = Fernet.generate_key().decode()
    result = CliRunner().invoke(encrypt_url_command, [URL], env={"POWMON_HOST_KEY": key})
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    other_file, _ = make_key_file(tmp_path)  # a different key: must not be used
    s = settings(tmp_path, HOST=token, HOST_KEY_FILE=str(other_file))
    assert resolve_url(s.path, s.uplink, environ={"POWMON_HOST_KEY": key}).reveal() == URL


def test_encrypt_url_refuses_a_non_http_url_and_a_missing_key(tmp_path: Path) -> None:
    """Usage errors are one line and exit 2."""
    key_file, _ = make_key_file(tmp_path)
    bad = CliRunner().invoke(encrypt_url_command, ["ftp://x", "--key-file", str(key_file)])
    assert bad.exit_code == 2
    assert "scheme is 'ftp'" in bad.output
    nokey = CliRunner().invoke(encrypt_url_command, [URL], env={"POWMON_HOST_KEY": ""})
    assert nokey.exit_code == 2
    assert "no key" in nokey.output


@posix_only
def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    """Like ssh with a private key: mode 0644 is an error naming the file and the fix."""
    key_file, key = make_key_file(tmp_path)
    token = Fernet(key.encode()).encrypt(URL.encode()).decode()
    key_file.chmod(0o644)
    s = settings(tmp_path, HOST=token, HOST_KEY_FILE=str(key_file))
    with pytest.raises(SettingsError, match=r"permissions 0644 are too open.*chmod 600"):
        resolve_url(s.path, s.uplink, environ={})


def test_legacy_key_in_settings_works_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The original layout (HOST + LOCAL_DATA_PATH in one file) still works, with a WARNING."""
    key = Fernet.generate_key().decode()
    token = Fernet(key.encode()).encrypt(URL.encode()).decode()
    s = settings(tmp_path, HOST=token, LOCAL_DATA_PATH=key)
    with caplog.at_level(logging.INFO, logger="powmon.uplink"):
        assert resolve_url(s.path, s.uplink, environ={}).reveal() == URL
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "protects nothing" in warnings[0].getMessage()
    assert "api/ingest" not in caplog.text  # the URL is logged as scheme://host only
    assert "https://data.example.org" in caplog.text


def test_wrong_key_and_damaged_token_are_clear_settings_errors(tmp_path: Path) -> None:
    """A bad key or token stops the uplink (exit 2) naming the key's source, never the key."""
    key = Fernet.generate_key().decode()
    token = Fernet(key.encode()).encrypt(URL.encode()).decode()
    wrong = Fernet.generate_key().decode()
    s = settings(tmp_path, HOST=token)
    with pytest.raises(
        SettingsError, match=r"cannot decrypt it with the key from \$POWMON_HOST_KEY"
    ):
        resolve_url(s.path, s.uplink, environ={"POWMON_HOST_KEY": wrong})
    with pytest.raises(SettingsError, match="not a Fernet key") as info:
        resolve_url(s.path, s.uplink, environ={"POWMON_HOST_KEY": "not-a-key"})
    assert "not-a-key" not in str(info.value)
    damaged = settings(tmp_path, HOST=token[:-4] + "AAAA")
    with pytest.raises(SettingsError, match="token is damaged"):
        resolve_url(damaged.path, damaged.uplink, environ={"POWMON_HOST_KEY": key})
    with pytest.raises(SettingsError, match="no key was found"):
        resolve_url(s.path, s.uplink, environ={})


def test_secret_url_never_shows_in_the_config_repr(tmp_path: Path) -> None:
    """UplinkConfig can be logged or shown in a traceback without the URL or the tokens."""
    s = settings(
        tmp_path,
        UPLINK_URL=URL,
        UPLINK_TOKEN="tok-123",  # noqa: S106 (a test value)
        UPLINK_HEADERS={"X-K": "v9"},
    )
    up = UplinkConfig.from_settings(s, environ={})
    text = repr(up)
    assert "api/ingest" not in text and "tok-123" not in text and "v9" not in text
    cfg = up.http
    assert cfg is not None and up.mqtt is None
    assert cfg.where == "https://data.example.org"
    assert cfg.authorization is not None and cfg.authorization.reveal() == "Bearer tok-123"


def test_influx_settings_build_the_v2_write_url_and_token_header(tmp_path: Path) -> None:
    """influx: <base>/api/v2/write?org&bucket&precision=ns, Authorization: Token ..."""
    s = settings(
        tmp_path,
        UPLINK_URL="http://127.0.0.1:8086",
        UPLINK_FORMAT="influx",
        INFLUX_ORG="my org",
        INFLUX_BUCKET="power",
        INFLUX_TOKEN="t0k",  # noqa: S106 (a test value)
    )
    cfg = influx_config(s, environ={})
    assert cfg.url.reveal() == (
        "http://127.0.0.1:8086/api/v2/write?org=my+org&bucket=power&precision=ns"
    )
    assert cfg.authorization is not None and cfg.authorization.reveal() == "Token t0k"
    assert influx_write_url("http://h:1/api/v2/write/", "o", "b").startswith(
        "http://h:1/api/v2/write?org=o"
    )


def test_influx_database_selects_the_v1_write_api(tmp_path: Path) -> None:
    """INFLUX_DATABASE: InfluxDB 1.x, <base>/write?db=..&precision=ns; with org/bucket too it
    is a settings error naming both."""
    s = settings(tmp_path, UPLINK_URL="http://127.0.0.1:8086/", UPLINK_FORMAT="influx",
                 INFLUX_DATABASE="lab power")
    cfg = influx_config(s, environ={})
    assert cfg.url.reveal() == "http://127.0.0.1:8086/write?db=lab+power&precision=ns"
    assert cfg.authorization is None
    assert influx_v1_write_url("http://h:1/write", "d") == "http://h:1/write?db=d&precision=ns"
    with pytest.raises(SettingsError, match=r"INFLUX_DATABASE.*INFLUX_ORG and INFLUX_BUCKET"):
        settings(tmp_path, UPLINK_URL="http://h:1", UPLINK_FORMAT="influx", INFLUX_DATABASE="d",
                 INFLUX_ORG="o", INFLUX_BUCKET="b")
    with pytest.raises(SettingsError, match=r"INFLUX_ORG: required.*INFLUX_DATABASE"):
        settings(tmp_path, UPLINK_URL="http://h:1", UPLINK_FORMAT="influx")


def test_bad_influx_measurement_is_a_settings_error(tmp_path: Path) -> None:
    """A measurement line protocol cannot carry is refused before anything starts."""
    s = settings(tmp_path, UPLINK_URL="http://127.0.0.1:8086", UPLINK_FORMAT="influx",
                 INFLUX_ORG="o", INFLUX_BUCKET="b", INFLUX_MEASUREMENT="power\\")
    with pytest.raises(SettingsError, match=r"INFLUX_MEASUREMENT.*ends with a backslash"):
        UplinkConfig.from_settings(s, environ={})


def test_no_output_refuses_to_run(tmp_path: Path) -> None:
    """An uplink started with REMOTE_SAVE false and no MQTT_URL says so instead of idling
    silently; with MQTT_URL alone it runs the MQTT output only."""
    s = settings(tmp_path, REMOTE_SAVE=False, UPLINK_URL=URL)
    with pytest.raises(SettingsError, match="REMOTE_SAVE: is false and MQTT_URL is not set"):
        UplinkConfig.from_settings(s, environ={})
    s = settings(tmp_path, REMOTE_SAVE=False, MQTT_URL="mqtt://127.0.0.1")
    up = UplinkConfig.from_settings(s, environ={})
    assert up.outputs == ("mqtt",) and up.http is None


def test_missing_ca_bundle_is_a_settings_error(tmp_path: Path) -> None:
    """UPLINK_VERIFY_TLS naming a CA file that is not there stops the start, not each request."""
    s = settings(tmp_path, UPLINK_URL=URL, UPLINK_VERIFY_TLS="certs/ca.pem")
    with pytest.raises(SettingsError, match=r"UPLINK_VERIFY_TLS.*not a file"):
        UplinkConfig.from_settings(s, environ={})
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = HttpConfig.from_settings(s, environ={})
    assert cfg.verify_tls == str(tmp_path / "certs/ca.pem")
