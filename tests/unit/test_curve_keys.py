"""CURVE keys: `powmon keygen --curve`, the key settings, and the refusals that keep them safe."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq.auth
from click.testing import CliRunner

from powmon.base.processes import pipeline
from powmon.broker.broker import BrokerConfig
from powmon.common.errors import SettingsError
from powmon.common.settings import load_settings
from powmon.keys import keygen_command
from tests.helpers import write_settings
from tests.keys import broker_host, host_keys, other_host

posix_only = pytest.mark.skipif(os.name == "nt", reason="file modes are POSIX")
SENSORS = [{"PORT": "sim://ROOM2", "SENSORS_ID": "ROOM2"}]
REMOTE = {"BROKER_FRONTEND": "tcp://10.0.0.1:5555", "BROKER_BACKEND": "tcp://10.0.0.1:5556"}


@posix_only
def test_keygen_curve_writes_a_zeromq_key_pair(tmp_path: Path) -> None:
    """NAME.key (public) and NAME.key_secret (0600) in ZeroMQ's certificate format; the public
    key is printed, the instructions say where each file goes; an existing key is never
    overwritten (exit 2)."""
    args = ["--curve", "--out", str(tmp_path / "k"), "--name", "pi2"]
    result = CliRunner().invoke(keygen_command, args)
    assert result.exit_code == 0, result.output
    public, secret = tmp_path / "k" / "pi2.key", tmp_path / "k" / "pi2.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    key, none = zmq.auth.load_certificate(public)
    assert none is None
    assert zmq.auth.load_certificate(secret)[0] == key
    assert zmq.auth.load_certificate(secret)[1] is not None
    assert result.output.splitlines()[0] == key.decode()
    assert "CURVE_AUTHORIZED" in result.output
    assert "CURVE_CLIENT_KEY" in result.output
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["pi2.key", "pi2.key_secret"]
    again = CliRunner().invoke(keygen_command, args)
    assert again.exit_code == 2
    assert "already exists; not overwriting a key" in again.output
    assert zmq.auth.load_certificate(public)[0] == key


def test_keygen_name_needs_curve_and_a_plain_name(tmp_path: Path) -> None:
    """--name belongs to --curve, and may not be a path (it names two files in --out)."""
    assert CliRunner().invoke(keygen_command, ["--name", "x"]).exit_code == 2
    bad = CliRunner().invoke(keygen_command, ["--curve", "--out", str(tmp_path), "--name", "../x"])
    assert bad.exit_code == 2
    assert "--name" in bad.output
    assert not list(tmp_path.iterdir())


@posix_only
@pytest.mark.parametrize("key", ["CURVE_CLIENT_KEY", "CURVE_SERVER_KEY"])
def test_a_private_key_others_can_read_is_refused(tmp_path: Path, key: str) -> None:
    """Like HOST_KEY_FILE (the same check): a key pair readable by group or others stops
    every process with one line naming the file, the key and the fix."""
    public, secret = host_keys(tmp_path, "host")
    secret.chmod(0o644)
    (tmp_path / "authorized").mkdir(mode=0o755)
    if key == "CURVE_SERVER_KEY":
        extra = broker_host(secret, tmp_path / "authorized")
    else:
        extra = other_host(secret, public)
    path = write_settings(tmp_path / "settings.yaml", SENSORS, **REMOTE, **extra)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert str(info.value) == (
        f"{secret}: {key}: permissions 0644 are too open; the key must be readable by its "
        f"owner only (chmod 600 {secret})"
    )


def test_broker_host_and_other_host_settings(tmp_path: Path) -> None:
    """The broker's host uses its own pair for its clients too; another host has its pair and
    the broker's public key, given as a .key file or as its Z85 text, whichever."""
    broker_pub, broker_secret = host_keys(tmp_path, "lab-pc")
    pi_pub, pi_secret = host_keys(tmp_path, "pi2")
    authorized = tmp_path / "authorized"
    authorized.mkdir(mode=0o755)
    extra = broker_host(broker_secret, authorized)
    broker = load_settings(write_settings(tmp_path / "a.yaml", SENSORS, **REMOTE, **extra))
    assert broker.curve is not None
    assert broker.curve.broker_here
    public = zmq.auth.load_certificate(broker_pub)[0]
    assert broker.curve.server == broker.curve.pair.public == public
    assert broker.curve.authorized == authorized
    assert broker.curve.pair.secret.decode() not in repr(broker)
    for server_public in (str(broker_pub), public.decode()):
        extra = {"CURVE_CLIENT_KEY": str(pi_secret), "CURVE_SERVER_PUBLIC": server_public}
        pi = load_settings(write_settings(tmp_path / "b.yaml", SENSORS, **REMOTE, **extra))
        assert pi.curve is not None
        assert not pi.curve.broker_here
        assert pi.curve.server == broker.curve.pair.public
        assert pi.curve.pair.public == zmq.auth.load_certificate(pi_pub)[0]


def test_single_host_settings_have_no_curve(tmp_path: Path) -> None:
    """Loopback stays as it was: no keys, no CURVE, every process in the pipeline."""
    settings = load_settings(write_settings(tmp_path / "s.yaml", SENSORS))
    assert settings.curve is None
    assert {s.process for s in pipeline(settings)} == {"broker", "writer", "reader"}


def test_a_host_whose_broker_runs_elsewhere_runs_its_readers_only(tmp_path: Path) -> None:
    """`powmon run` (and `powmon deploy`) on a reader host starts its readers, no broker or
    writer of its own; starting the broker there anyway is a settings error."""
    broker_pub, _ = host_keys(tmp_path, "lab-pc")
    _, pi_secret = host_keys(tmp_path, "pi2")
    extra = other_host(pi_secret, broker_pub)
    settings = load_settings(write_settings(tmp_path / "s.yaml", SENSORS, **REMOTE, **extra))
    assert [s.key for s in pipeline(settings)] == ["reader ROOM2"]
    with pytest.raises(SettingsError, match="CURVE_SERVER_KEY: required to run the broker"):
        BrokerConfig.from_settings(settings)


def test_wrong_key_files_are_named(tmp_path: Path) -> None:
    """A public .key where the pair is needed, and a CURVE_SERVER_PUBLIC that is neither a
    key nor a key file, each give one line naming the file and the key."""
    broker_pub, _ = host_keys(tmp_path, "lab-pc")
    pi_pub, pi_secret = host_keys(tmp_path, "pi2")
    pi_pub.chmod(0o600)
    path = write_settings(tmp_path / "s.yaml", SENSORS, **REMOTE, **other_host(pi_pub, broker_pub))
    with pytest.raises(SettingsError, match=r"pi2\.key: CURVE_CLIENT_KEY: holds a public key"):
        load_settings(path)
    extra = other_host(pi_secret, tmp_path / "nope.key")
    path = write_settings(tmp_path / "s.yaml", SENSORS, **REMOTE, **extra)
    with pytest.raises(SettingsError, match=r"nope\.key: CURVE_SERVER_PUBLIC: not a public key"):
        load_settings(path)


@posix_only
def test_an_authorized_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    """Whoever can write in CURVE_AUTHORIZED can admit any key: group/other write is refused."""
    _, secret = host_keys(tmp_path, "lab-pc")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    authorized.chmod(0o777)
    path = write_settings(tmp_path / "s.yaml", SENSORS, **REMOTE, **broker_host(secret, authorized))
    with pytest.raises(SettingsError, match="CURVE_AUTHORIZED: group or others may write"):
        load_settings(path)
