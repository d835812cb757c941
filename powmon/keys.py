"""`powmon keygen` and `powmon encrypt-url`: the keys and tokens of an encrypted HOST, and
(`powmon keygen --curve`) the CURVE key pair of a host on a bus that spans several hosts.

The command-line side of uplink/server_url.py, which resolves HOST at run time, and of
common/curvezmq.py, which reads the CURVE key files: a process module keeps no click commands of
its own beyond its entry point.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import click
import zmq.auth
from cryptography.fernet import Fernet

from powmon.common.errors import SettingsError
from powmon.uplink.server_url import DEFAULT_KEY_ENV, check_url, read_key_file


class _CliError(click.ClickException):
    """One line on stderr, exit 2 (a usage or settings problem, like the processes)."""

    exit_code = 2


@click.command("keygen", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="write the key to FILE (mode 0600; refuses to overwrite) instead of printing it; "
    "with --curve: the folder for the two key files (default: .)",
)
@click.option("--curve", is_flag=True, help="make a CURVE key pair for the bus (several hosts)")
@click.option("--name", default=None, help="with --curve: the files' name (default: host name)")
def keygen_command(out: Path | None, curve: bool, name: str | None) -> None:
    """Make a new Fernet key for encrypting HOST; with --curve, a host's CURVE key pair for a
    bus across hosts (NAME.key, public; NAME.key_secret, private, mode 0600)."""
    if curve:
        _curve_keygen(out or Path("."), name or socket.gethostname().split(".")[0])
        return
    if name is not None:
        raise _CliError("--name: only with --curve")
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


def _curve_keygen(folder: Path, name: str) -> None:
    """Write NAME.key and NAME.key_secret with zmq.auth (ZeroMQ's certificate files), the
    secret one 0600 from the start: both are made in a private temporary folder, then linked
    into place, which also refuses to overwrite an existing key."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise _CliError(f"--name: {name!r}: use letters, digits, '_', '.' and '-' only")
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise _CliError(f"{path}: already exists; not overwriting a key")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".powmon-keygen-", dir=folder))  # mode 0700
        try:
            made_public, made_secret = map(Path, zmq.auth.create_certificates(work, name))
            made_secret.chmod(0o600)
            made_public.chmod(0o644)
            os.link(made_secret, secret)
            try:
                os.link(made_public, public)
            except OSError:
                secret.unlink()
                raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except FileExistsError as err:
        taken = err.filename2 or err.filename
        raise _CliError(f"{taken}: already exists; not overwriting a key") from None
    except OSError as err:
        raise _CliError(f"{folder}: cannot write the key files: {err}") from err
    key = zmq.auth.load_certificate(public)[0].decode("ascii")
    click.echo(key)
    click.echo(
        f"wrote {secret} (this host's key pair: it stays here, readable by you only) and "
        f"{public} (its public key, printed above). In settings.yaml:\n"
        f"  on a host that connects to the bus: CURVE_CLIENT_KEY: {secret.resolve()}\n"
        f"    and copy {public.name} into the CURVE_AUTHORIZED folder on the broker's host;\n"
        f"  on the broker's host: CURVE_SERVER_KEY: {secret.resolve()}\n"
        f'    and on the other hosts CURVE_SERVER_PUBLIC: "{key}" (or a copy of {public.name})',
        err=True,
    )


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
