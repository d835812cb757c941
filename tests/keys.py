"""CURVE keys for tests, made the way users make them: with `powmon keygen --curve`."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from powmon.common.curvezmq import Curve, load_pair
from powmon.keys import keygen_command


def host_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A host's key pair: (NAME.key, NAME.key_secret) in `folder`."""
    result = CliRunner().invoke(keygen_command, ["--curve", "--out", str(folder), "--name", name])
    assert result.exit_code == 0, result.output
    return folder / f"{name}.key", folder / f"{name}.key_secret"


@dataclass(frozen=True)
class LabKeys:
    """The keys of a broker's host and two others, (public, secret) each: `known` is in the
    broker's `authorized` folder, `stranger` is not."""

    broker: tuple[Path, Path]
    known: tuple[Path, Path]
    stranger: tuple[Path, Path]
    authorized: Path


def lab_keys(tmp: Path) -> LabKeys:
    keys, authorized = tmp / "keys", tmp / "authorized"
    authorized.mkdir()
    lab = LabKeys(host_keys(keys, "lab-pc"), host_keys(keys, "pi1"), host_keys(keys, "pi2"),
                  authorized)
    shutil.copy(lab.known[0], authorized)
    return lab


def broker_host(secret: Path, authorized: Path) -> dict[str, Any]:
    """The settings of the broker's host."""
    return {"CURVE_SERVER_KEY": str(secret), "CURVE_AUTHORIZED": str(authorized)}


def other_host(secret: Path, broker_public: Path) -> dict[str, Any]:
    """The settings of a host whose broker runs elsewhere."""
    return {"CURVE_CLIENT_KEY": str(secret), "CURVE_SERVER_PUBLIC": str(broker_public)}


def client_curve(secret: Path, server: Curve | bytes, authorized: Path | None = None) -> Curve:
    """A client host's Curve value without a settings file (for in-process sockets)."""
    pair = load_pair(secret, "CURVE_CLIENT_KEY")
    public = server.pair.public if isinstance(server, Curve) else server
    return Curve(pair, public, broker_here=False, authorized=authorized)


def server_curve(secret: Path, authorized: Path | None) -> Curve:
    """The broker host's Curve value without a settings file."""
    pair = load_pair(secret, "CURVE_SERVER_KEY")
    return Curve(pair, pair.public, broker_here=True, authorized=authorized)
