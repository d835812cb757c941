"""How every PowMon process starts and stops: settings, logging, signals, exit codes.

Signal handlers only set an Event (gunicorn's arbiter habit): no logging, no I/O inside a
handler. The process loop sees the event within its poll timeout, flushes what it holds and
returns; so does the end of the lifeline to `powmon run` (common.lifeline). Exit codes: 0 clean
stop, 2 bad settings (also settings the hardware refutes, such as STREAM: on for a board that
cannot stream), usage, or something this process must own held by another (a lock, a port), 1
a crash (logged with traceback).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn, TypeVar

from powmon.common import lifeline
from powmon.common.errors import InUseError, PowmonError, SettingsError
from powmon.common.logs import configure_logging
from powmon.common.settings import Settings, load_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_USAGE = 2


def install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if hasattr(signal, "SIGBREAK"):  # Windows console Ctrl-Break
        signal.signal(signal.SIGBREAK, handler)


def load_or_exit(path: Path | None) -> Settings:
    """Load settings; on error print the one-line message and exit 2."""
    try:
        return load_settings(path)
    except SettingsError as err:
        print(f"powmon: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def run_process(
    proc: str,
    config_path: Path | None,
    build: Callable[[Settings], T],
    run: Callable[[T, threading.Event], None],
    log_level: int | None = None,
) -> NoReturn:
    """The body of every process's main(): load, configure, run until stopped, exit."""
    settings = load_or_exit(config_path)
    configure_logging(settings.log_level if log_level is None else log_level, proc)
    try:
        config = build(settings)
    except SettingsError as err:
        print(f"powmon: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    stop = threading.Event()
    install_stop_handlers(stop)
    line = lifeline.attach(stop)  # under `powmon run`: stop when the supervisor is gone
    try:
        run(config, stop)
    except (InUseError, SettingsError) as err:  # SettingsError: settings the device refutes
        print(f"{proc}: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except PowmonError as err:
        log.error("%s stopped: %s", proc, err)
        raise SystemExit(EXIT_CRASH) from None
    except Exception:  # the one broad catch: report any crash with its traceback, exit 1
        log.exception("%s crashed", proc)
        raise SystemExit(EXIT_CRASH) from None
    finally:
        if line is not None:
            line.close()
    raise SystemExit(EXIT_OK)
