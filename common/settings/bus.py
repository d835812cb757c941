"""The bus's section: the ports its sockets take, and its CURVE keys.

The broker's two endpoints, the web page's address and the readers' replay ports must not take
one another's port; CURVE is required as soon as an endpoint is reachable from other hosts,
with the broker's key pair on its host and a client pair on the others (docs/hosts.md). The
endpoints themselves, HWM and the rest stay flat fields of Settings (whole.py), as every
process reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from powmon.common import checks as c
from powmon.common.curvezmq import Curve, check_folder, is_local_endpoint, load_pair, load_public
from powmon.common.errors import SettingsError
from powmon.common.settings.problems import Found
from powmon.common.settings.values import resolve

BUS_KEYS: Final = ("BROKER_FRONTEND", "BROKER_BACKEND")
CURVE_KEYS: Final = (
    "CURVE_SERVER_KEY", "CURVE_AUTHORIZED", "CURVE_CLIENT_KEY", "CURVE_SERVER_PUBLIC",
)
_CURVE_HOW: Final = (
    "set CURVE_SERVER_KEY and CURVE_AUTHORIZED on the broker's host, CURVE_CLIENT_KEY and "
    "CURVE_SERVER_PUBLIC on the other hosts (docs/hosts.md)"
)

_Taken = list[tuple[str, str, "tuple[str, int] | str"]]  # key, as written, address


def check_bus(found: Found, base: Path, v: dict[str, Any]) -> Curve | None:
    """The bus's rules: its ports apart, then its CURVE keys loaded (None: no CURVE)."""
    _check_ports(found, v)
    return found.run((*BUS_KEYS, *CURVE_KEYS), _curve, found.where, base, v)


def _check_ports(found: Found, v: dict[str, Any]) -> None:
    """No two of the bus endpoints and the web page's address may take the same port on the
    same host (the second bind would fail, the broker's own other socket taken for a foreign
    program), nor may REPLAY_PORTS include one of their ports (a reader would take it first)."""
    taken: _Taken = []
    for key in BUS_KEYS:
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


def _check_distinct(found: Found, taken: _Taken) -> None:
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


def _as_set(found: Found, key: str, shown: str) -> str:
    """A value as a message recalls it, saying when it is a default the file does not set."""
    return repr(shown) if key in found.lines else f"{shown!r}, its default"


def _clash(a: tuple[str, int] | str, b: tuple[str, int] | str) -> bool:
    """Whether two addresses would be the same socket: the same ipc path, or the same port on
    the same host (a wildcard host is every host; localhost is 127.0.0.1)."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    hosts = {h.replace("localhost", "127.0.0.1") for h in (a[0], b[0])}
    return a[1] == b[1] and (len(hosts) == 1 or bool(hosts & c.WILDCARD_HOSTS))


def _curve(where: Path, base: Path, v: dict[str, Any]) -> Curve | None:
    """The bus's CURVE keys: one pair per host (the broker's on its host, a client pair on the
    others); required as soon as an endpoint is reachable from other hosts."""
    given = [k for k in ("CURVE_SERVER_KEY", "CURVE_CLIENT_KEY", "CURVE_SERVER_PUBLIC") if v[k]]
    if not given:
        _check_no_curve(where, v)
        return None
    authorized = resolve(base, v["CURVE_AUTHORIZED"]) if v["CURVE_AUTHORIZED"] else None
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
    pair = load_pair(resolve(base, v["CURVE_CLIENT_KEY"]), "CURVE_CLIENT_KEY")
    text = v["CURVE_SERVER_PUBLIC"]
    server = load_public(text, resolve(base, text), "CURVE_SERVER_PUBLIC")
    return Curve(pair, server, broker_here=False, authorized=authorized)


def _check_no_curve(where: Path, v: dict[str, Any]) -> None:
    for key in BUS_KEYS:
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
    pair = load_pair(resolve(base, v["CURVE_SERVER_KEY"]), "CURVE_SERVER_KEY")
    return Curve(pair, pair.public, broker_here=True, authorized=authorized)
