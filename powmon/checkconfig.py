"""`powmon check-config`: is this settings.yaml good, and is the machine ready for it?

In order: the settings are validated (a bad file: every mistake in it, one line each with
the file and line, exit 2: a file with five mistakes needs one run, not five), the effective
configuration is printed with every secret masked (tokens, keys, header values, the decrypted
HOST shown only as scheme://host:port), then each serial port is opened and asked for a
reading, and each bus endpoint is said to be free, in use by PowMon, or in use by something
else. Exit 0 when all is well, 1 when a problem was found, 2 for bad settings.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import yaml
import zmq

from powmon.base.processes import broker_here
from powmon.common.errors import SettingsError
from powmon.common.options import CONTEXT_SETTINGS, config_option
from powmon.common.runtime import EXIT_USAGE
from powmon.common.settings import (
    SECRET_KEYS,
    Settings,
    SettingsProblems,
    effective_values,
    load_settings,
)
from powmon.probes import Heard, endpoint_state, listen, port_answer, reach
from powmon.uplink.server_url import decrypt_url, find_key, redact_url

MASK = "***"


class BadSettings(click.ClickException):
    exit_code = 2


def _url_shown(url: str) -> str:
    """A URL without what may be a credential: user info and query values."""
    parts = urlsplit(url)
    path = parts.path if parts.path not in ("", "/") else ""
    return redact_url(url) + path + ("?" + MASK if parts.query else "")


def masked(values: dict[str, Any], settings: Settings) -> tuple[dict[str, Any], str | None]:
    """The values with secrets masked, and why HOST cannot be decrypted (None if it can)."""
    shown = dict(values)
    for key in SECRET_KEYS:
        if shown.get(key) is not None:
            shown[key] = MASK
    if shown.get("UPLINK_URL"):
        shown["UPLINK_URL"] = _url_shown(shown["UPLINK_URL"])
    shown["UPLINK_HEADERS"] = dict.fromkeys(shown.get("UPLINK_HEADERS") or {}, MASK)
    problem = None
    token = settings.uplink.host_token
    if token:
        try:
            key, source = find_key(settings.path, settings.uplink, os.environ)
            url = decrypt_url(token, key, source, settings.path)
            shown["HOST"] = f"{MASK} (decrypts to {redact_url(url.reveal())}, key from {source})"
        except SettingsError as err:
            shown["HOST"] = f"{MASK} (cannot be decrypted)"
            problem = str(err)
    return shown, problem


def _ports(settings: Settings, heard: Heard) -> list[tuple[str, bool, str]]:
    """(sensor, ok, text) per sensor; ports whose reader is heard are left alone."""
    stop = threading.Event()
    todo = [s for s in settings.sensors if ("reader", s.sensor_id) not in heard.states]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(todo)))) as pool:
        answers = dict(
            zip(
                [s.sensor_id for s in todo],
                pool.map(lambda s: port_answer(settings, s.sensor_id, stop), todo),
                strict=True,
            )
        )
    results = []
    for s in settings.sensors:
        if s.sensor_id in answers:
            ok, text = answers[s.sensor_id]
        else:
            state = heard.states[("reader", s.sensor_id)]
            ok, text = True, f"in use by its PowMon reader (running, state {state!r}; not opened)"
        results.append((s.sensor_id, ok, text))
    return results


def _endpoints(settings: Settings, heard: Heard) -> list[tuple[str, bool, str]]:
    results = []
    for key, endpoint, kind in (
        ("BROKER_FRONTEND", settings.broker_frontend, zmq.PUB),
        ("BROKER_BACKEND", settings.broker_backend, zmq.SUB),
    ):
        if not broker_here(settings):  # the broker is on another host: can we get in?
            results.append((f"{key} {endpoint}", *reach(endpoint, kind, settings.curve)))
            continue
        state = endpoint_state(endpoint)
        if state == "in use" and heard.states:
            results.append((f"{key} {endpoint}", True, f"in use by PowMon ({heard.names()})"))
        elif state == "in use":
            results.append(
                (f"{key} {endpoint}", False, "in use by something else (no PowMon heartbeat heard)")
            )
        else:
            results.append((f"{key} {endpoint}", state == "free", state))
    return results


def _load(config_path: Path | None) -> Settings:
    """The settings, or every mistake of the file on stderr (one line each, 'file:line: KEY:
    ...' where YAML gives the line) and exit 2."""
    try:
        return load_settings(config_path)
    except SettingsProblems as err:
        for problem in err.problems:
            click.echo(f"powmon: error: {problem.located()}", err=True)
        if len(err.problems) > 1:
            click.echo(f"powmon: {len(err.problems)} problems in {err.problems[0].where}", err=True)
    except SettingsError as err:  # unreadable, or not YAML: nothing more can be checked
        click.echo(f"powmon: error: {err}", err=True)
    raise SystemExit(EXIT_USAGE)


def _section(title: str, rows: list[tuple[str, bool, str]]) -> int:
    click.echo(f"\n{title}:")
    width = max(len(name) for name, _, _ in rows)
    for name, ok, text in rows:
        click.echo(f"  {name:<{width}}  {'ok     ' if ok else 'PROBLEM'}  {text}")
    return sum(not ok for _, ok, _ in rows)


@click.command("check-config", context_settings=CONTEXT_SETTINGS)
@config_option
def check_config_command(config_path: Path | None) -> None:
    """Validate settings and test the ports and bus endpoints.

    Checks every key of settings.yaml and lists every mistake at once, one line each as
    FILE:LINE: KEY: what was expected, got what (exit 2). A valid file is shown as the
    processes will use it (defaults filled in, secrets masked); then each serial port is
    opened and asked for a reading, and each bus endpoint is said to be free, in use by
    PowMon, or in use by something else. Nothing is started and nothing is written.

    Exit codes: 0 all good, 1 a problem found, 2 bad settings.
    """
    settings = _load(config_path)
    values = effective_values(settings)
    shown, host_problem = masked(values, settings)
    click.echo(f"{settings.path}: valid. Effective configuration (secrets masked):\n")
    click.echo(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True).rstrip())
    heard = listen(settings)
    problems = _section("serial ports", _ports(settings, heard))
    problems += _section("bus endpoints", _endpoints(settings, heard))
    if host_problem is not None:
        if settings.remote_save:
            raise BadSettings(host_problem)
        click.echo(f"\nnote: HOST is set but REMOTE_SAVE is false; and: {host_problem}")
    click.echo(f"\n{'all good' if not problems else f'{problems} problem(s) found'}")
    if problems:
        raise SystemExit(1)
