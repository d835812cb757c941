"""CURVE on the bus: the key files, and the one value that tells every socket how to use them.

Within one host the bus stays on loopback, in the clear, with no keys (as it always was). As
soon as an endpoint is reachable from other hosts, ZeroMQ's CURVE (CurveZMQ: elliptic-curve
encryption and authentication of both ends) is required: settings/bus.py refuses a non-loopback
BROKER_FRONTEND/BACKEND without keys.

One key pair per host. The broker's host has CURVE_SERVER_KEY (its pair, a `.key_secret` file)
and CURVE_AUTHORIZED (a folder of the `.key` files of the other hosts admitted on the bus);
every other host has CURVE_CLIENT_KEY (its own pair) and CURVE_SERVER_PUBLIC (the broker's
public key). Processes on the broker's host connect with the broker's own pair. The files are
ZeroMQ certificates, as `zmq.auth.create_certificates` writes them (`powmon keygen --curve`),
so other ZeroMQ tools read them too.

Sockets that serve (the broker, each reader's replay socket) admit only authorised keys
(common.zap): the folder's, the broker's and this host's own. So a reader's replay socket
admits the sinks on the broker's host without any folder on the reader's host.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from zmq.utils import z85

from powmon.common.errors import SettingsError
from powmon.common.keyfile import check_private

Z85_KEY: Final = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_TCP: Final = re.compile(r"tcp://(?:[^;]*;)?([^:\[\]]+|\[[^\]]+\]):(\d+|\*)")


def is_z85_key(text: str) -> bool:
    """A 32-byte CURVE key as ZeroMQ writes it: 40 characters of Z85."""
    return Z85_KEY.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair, both halves as Z85 bytes (what the socket options take)."""

    public: bytes
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Curve:
    """How this host's sockets use CURVE; None in Settings when the bus stays on loopback.

    `pair` is this host's key pair: the broker's on the broker's host, CURVE_CLIENT_KEY on the
    others. `server` is the broker's public key (on the broker's host, `pair.public`).
    `authorized` is the folder of further public keys the sockets this host serves admit.
    """

    pair: KeyPair
    server: bytes
    broker_here: bool
    authorized: Path | None

    @property
    def public_text(self) -> str:
        return self.pair.public.decode("ascii")


def load_pair(path: Path, key: str) -> KeyPair:
    """A key pair from a `.key_secret` file, refused when others can read it."""
    try:
        check_private(path, key)
        public, secret = _load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise SettingsError(f"{path}: {key}: cannot read the key pair: {err}") from err
    if secret is None:
        raise SettingsError(
            f"{path}: {key}: holds a public key only; give the .key_secret file that "
            "'powmon keygen --curve' wrote next to it"
        )
    _check_key(path, key, public)
    _check_key(path, key, secret)
    return KeyPair(public, secret)


def load_public(value: str, path: Path, key: str) -> bytes:
    """A public key given as its Z85 text `value`, or else read from the ZeroMQ certificate
    file at `path` (`value` resolved as a path)."""
    if is_z85_key(value):
        return value.encode("ascii")
    try:
        public, _ = _load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise SettingsError(
            f"{path}: {key}: not a public key (40 characters of Z85) nor a readable .key file: "
            f"{err}"
        ) from err
    _check_key(path, key, public)
    return public


def _check_key(path: Path, key: str, value: bytes) -> None:
    try:
        ok = is_z85_key(value.decode("ascii")) and len(z85.decode(value)) == 32
    except (UnicodeDecodeError, ValueError, KeyError):
        ok = False
    if not ok:
        raise SettingsError(f"{path}: {key}: the file holds no valid CURVE key")


def authorized_keys(folder: Path) -> tuple[dict[bytes, Path], list[str]]:
    """The public keys of the `*.key` files in `folder`, and a message per file refused.

    The `.key` suffix is ZeroMQ's (czmq's) convention; a `.key_secret` copied in by mistake is
    not read.
    """
    keys: dict[bytes, Path] = {}
    problems: list[str] = []
    for path in sorted(folder.glob("*.key")):
        try:
            public, _ = _load_certificate(path)
            _check_key(path, "CURVE_AUTHORIZED", public)
        except (OSError, ValueError, UnicodeDecodeError, SettingsError) as err:
            problems.append(f"{path}: ignored: {err}")
            continue
        keys[public] = path
    return keys, problems


def check_folder(path: Path, key: str) -> None:
    """The authorised-keys folder: a folder, writable by its owner only (whoever can write in
    it can admit any key)."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise SettingsError(f"{path}: {key}: cannot use the folder: {err}") from err
    if not path.is_dir():
        raise SettingsError(f"{path}: {key}: expected a folder of .key files")
    if mode & 0o022 and os.name != "nt":
        raise SettingsError(
            f"{path}: {key}: group or others may write in it (and so admit any key); "
            f"chmod go-w {path}"
        )


def endpoint_host(endpoint: str) -> str | None:
    """The host of a tcp:// endpoint (brackets stripped), or None for ipc://, inproc://."""
    match = _TCP.fullmatch(endpoint)
    return match.group(1).strip("[]") if match else None


def is_loopback(host: str) -> bool:
    """Only this host can reach it: localhost or a loopback address (a name may resolve
    anywhere, a wildcard or an interface name binds beyond loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_endpoint(endpoint: str) -> bool:
    """An endpoint that other hosts cannot reach: tcp on loopback, ipc, inproc."""
    host = endpoint_host(endpoint)
    if host is None:
        return not endpoint.startswith("tcp://")
    return is_loopback(host)


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    """zmq.auth.load_certificate, imported only when a key file is read: zmq.auth pulls in
    asyncio and ssl (~7 MiB of RSS), which a reader without CURVE never needs (256 readers on
    one host)."""
    import zmq.auth  # noqa: PLC0415 - deliberately lazy, see above

    return zmq.auth.load_certificate(path)
