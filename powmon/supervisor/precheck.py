"""What `powmon run` checks before it starts anything, and refuses (exit 2) when it fails.

A misconfiguration would make a child fail at every restart: it is found here, once, with a
message naming it, instead of as a restart loop.
"""

from __future__ import annotations

import sys

from powmon.base.processes import pipeline
from powmon.common.errors import SettingsError
from powmon.common.lock import holder, spool_lock, writer_lock
from powmon.common.runtime import EXIT_USAGE
from powmon.common.settings import Settings
from powmon.probes import endpoint_state
from powmon.readers.reader import ReaderConfig
from powmon.uplink.config import UplinkConfig
from powmon.web.config import WebConfig


def precheck(settings: Settings) -> None:
    """Refuse to start (exit 2) on what would make a child fail at every restart: the checks
    each process makes of its own configuration, beyond the settings file itself (the uplink's
    key and encrypted HOST, the readers' sensor entries, the web page's address and token), a
    pipeline already running on the same data root or spool, and a bus endpoint that is
    taken; each only for what this host runs."""
    running = {spec.process for spec in pipeline(settings)}
    _check_configs(settings, running)
    locks = [writer_lock(settings.data_root)] if "writer" in running else []
    if "uplink" in running:
        locks.append(spool_lock(settings.uplink.spool_path))
    for lock in locks:
        pid = holder(lock.path)
        if pid is not None:
            _refuse(f"already running: pid {pid or '?'}, {lock.what}")
    if "broker" not in running:
        return  # a host whose broker runs elsewhere: its endpoints are not ours to bind
    for endpoint in (settings.broker_frontend, settings.broker_backend):
        state = endpoint_state(endpoint)  # the same probe as check-config's
        if state != "free":
            _refuse(f"bus endpoint {endpoint} is not free ({state}): is another pipeline running?")


def _check_configs(settings: Settings, running: set[str]) -> None:
    try:
        for sensor in settings.sensors:
            ReaderConfig.from_settings(settings, sensor.sensor_id)
        if "uplink" in running:
            UplinkConfig.from_settings(settings)
        if "web" in running:
            WebConfig.from_settings(settings)
    except SettingsError as err:
        _refuse(str(err))


def _refuse(message: str) -> None:
    print(f"powmon: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)
