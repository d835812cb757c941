"""`powmon keygen` and `powmon encrypt-url`: the keys and tokens of an encrypted HOST.

The command-line side of uplink/keys.py, which resolves HOST at run time: a process module
keeps no click commands of its own beyond its entry point.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from cryptography.fernet import Fernet

from powmon.common.errors import SettingsError
from powmon.uplink.keys import DEFAULT_KEY_ENV, check_url, read_key_file


class _CliError(click.ClickException):
    """One line on stderr, exit 2 (a usage or settings problem, like the processes)."""

    exit_code = 2


@click.command("keygen", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the key to FILE (mode 0600; refuses to overwrite) instead of printing it",
)
def keygen_command(out: Path | None) -> None:
    """Make a new Fernet key for encrypting HOST."""
    key = Fernet.generate_key().decode()
    if out is None:
        click.echo(key)
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _CliError(f"{out}: already exists; not overwriting a key") from None
    except OSError as err:
        raise _CliError(f"{out}: cannot create the key file: {err}") from err
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    click.echo(f"wrote a new key to {out}; point HOST_KEY_FILE at it", err=True)


@click.command("encrypt-url", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("url")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="the key file (default: the key in $POWMON_HOST_KEY, or --key-env)",
)
@click.option("--key-env", default=DEFAULT_KEY_ENV, show_default=True,
              help="environment variable holding the key")
def encrypt_url_command(url: str, key_file: Path | None, key_env: str) -> None:
    """Print the Fernet token for URL, to paste into settings.yaml as HOST."""
    problem = check_url(url)
    if problem is not None:
        raise _CliError(f"URL: cannot use it: {problem}")
    try:
        key = read_key_file(key_file) if key_file else os.environ.get(key_env, "").strip()
    except SettingsError as err:
        raise _CliError(str(err)) from None
    if not key:
        raise _CliError(f"no key: pass --key-file FILE or set ${key_env} ('powmon keygen')")
    try:
        fernet = Fernet(key.encode())
    except ValueError:
        raise _CliError("the key is not a Fernet key (make one with 'powmon keygen')") from None
    click.echo(fernet.encrypt(url.encode()).decode())
