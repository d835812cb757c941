"""The one check every private key file gets before it is read: owner-only permissions.

A key others can read protects nothing, so PowMon refuses it as ssh refuses a private key
open to group or others: HOST_KEY_FILE (the uplink's Fernet key) and the CURVE key pairs of the
bus (CURVE_SERVER_KEY, CURVE_CLIENT_KEY) all come through here. Windows has no such mode bits;
there the check is skipped.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from powmon.common.errors import SettingsError


def check_private(path: Path, key: str) -> None:
    """Raise SettingsError (naming the file and the settings key) when group or others may
    access `path`; OSError when it cannot be looked at."""
    mode = path.stat().st_mode
    if os.name != "nt" and mode & 0o077:
        raise SettingsError(
            f"{path}: {key}: permissions {stat.S_IMODE(mode):04o} are too open; "
            f"the key must be readable by its owner only (chmod 600 {path})"
        )
