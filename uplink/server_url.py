"""The server's address: UPLINK_URL, or HOST (a Fernet token) decrypted with a key kept apart.

The original kept the key (LOCAL_DATA_PATH) in the same settings.yaml as the token it
decrypts, which hides the URL from nobody who can read the file. PowMon looks for the key, in
order, in the environment variable named by HOST_KEY_ENV, in HOST_KEY_FILE (refused when group
or others can read it, as ssh refuses a private key), and only then in LOCAL_DATA_PATH, with a
warning. The decrypted URL is a Secret: it is never logged (only scheme and host are) and
never written anywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from powmon.common.errors import SettingsError
from powmon.common.keyfile import check_private
from powmon.common.settings import Secret, UplinkSettings

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV: Final = "POWMON_HOST_KEY"


def redact_url(url: str) -> str:
    """scheme://host[:port] only: what may appear in a log line."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def check_url(url: str) -> str | None:
    """Why `url` is not a usable http(s) URL, without repeating it; None when it is fine."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        return "it is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"its scheme is {parts.scheme!r}, not 'http' or 'https'"
    if not parts.hostname:
        return "it has no host name"
    return None


def read_key_file(path: Path) -> str:
    """The key in `path`, refused when the file is open to group or others (POSIX only)."""
    try:
        check_private(path, "HOST_KEY_FILE")
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{path}: HOST_KEY_FILE: cannot read the key: {err}") from err
    if not key:
        raise SettingsError(f"{path}: HOST_KEY_FILE: the file is empty")
    return key


def find_key(where: Path, cfg: UplinkSettings, environ: Mapping[str, str]) -> tuple[str, str]:
    """(key, where it came from), in order of preference; SettingsError when there is none."""
    from_env = environ.get(cfg.key_env, "").strip()
    if from_env:
        return from_env, f"${cfg.key_env}"
    if cfg.key_file is not None:
        return read_key_file(cfg.key_file), str(cfg.key_file)
    if cfg.legacy_key is not None:
        log.warning(
            "HOST key read from LOCAL_DATA_PATH in %s: a key kept beside the token it decrypts "
            "protects nothing; put it in $%s or HOST_KEY_FILE instead (see docs/uplink.md)",
            where, cfg.key_env,
        )
        return cfg.legacy_key.reveal(), "LOCAL_DATA_PATH"
    raise SettingsError(
        f"{where}: HOST: is encrypted, but no key was found: set ${cfg.key_env}, or "
        "HOST_KEY_FILE to a file made by 'powmon keygen --out FILE'"
    )


def decrypt_url(token: str, key: str, source: str, where: Path) -> Secret:
    """Decrypt HOST; errors name the key's source, never the key or the URL."""
    # Imported here: only an encrypted HOST needs it, and it costs the uplink ~6 MB of memory.
    from cryptography.fernet import Fernet, InvalidToken  # noqa: PLC0415

    try:
        fernet = Fernet(key.encode())
    except ValueError as err:
        raise SettingsError(
            f"{where}: HOST: the key from {source} is not a Fernet key "
            "(32 url-safe base64-encoded bytes, as 'powmon keygen' makes)"
        ) from err
    try:
        url = fernet.decrypt(token.strip().encode()).decode("utf-8")
    except (InvalidToken, UnicodeDecodeError) as err:
        raise SettingsError(
            f"{where}: HOST: cannot decrypt it with the key from {source}: wrong key, or the "
            "token is damaged (make a new one with 'powmon encrypt-url')"
        ) from err
    problem = check_url(url)
    if problem is not None:
        raise SettingsError(f"{where}: HOST: decrypts to something PowMon cannot use: {problem}")
    return Secret(url)


def resolve_url(
    where: Path, cfg: UplinkSettings, environ: Mapping[str, str] | None = None
) -> Secret:
    """The server's URL: UPLINK_URL if set, else HOST decrypted."""
    env = os.environ if environ is None else environ
    if cfg.url:
        if cfg.host_token:
            log.info("UPLINK_URL is set; HOST is ignored")
        return Secret(cfg.url)
    if not cfg.host_token:
        # Not a rule of its own: load_settings already refuses REMOTE_SAVE without either.
        raise ValueError("resolve_url: neither UPLINK_URL nor HOST is set")
    key, source = find_key(where, cfg, env)
    url = decrypt_url(cfg.host_token, key, source, where)
    log.info("HOST decrypted with the key from %s: %s", source, redact_url(url.reveal()))
    return url
