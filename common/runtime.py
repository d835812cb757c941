"""How every PowMon process starts and stops: settings, logging, signals, exit codes.

Signal handlers only set an Event (gunicorn's arbiter habit): no logging, no I/O inside a
handler. The process loop sees the event within its poll timeout, flushes what it holds and
returns; so does the end of the lifeline to `powmon run` (common.lifeline). Exit codes: 0 clean
stop, 2 bad settings (also settings the hardware refutes, such as STREAM: on for a board that
cannot stream), usage, or something this process must own held by another (a lock, a port), 1
a crash (logged with traceback).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
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


class Stop(threading.Event):
    """A stop request that also wakes a sleeping loop: `fileno()` turns readable when it is
    set, so a loop can sleep in one poll(2) on its sockets, its deadline and this, instead of
    waking every so often to look (a process at rest costs nothing). Set from a signal
    handler (which runs in the main thread between bytecodes, not in C's signal context) or
    from the lifeline's thread alike."""

    def __init__(self) -> None:
        super().__init__()
        self._recv, self._send = socket.socketpair()
        self._recv.setblocking(False)
        self._send.setblocking(False)

    def set(self) -> None:
        super().set()
        with contextlib.suppress(OSError):  # full (already woken) or closed: either is fine
            self._send.send(b"x")

    def fileno(self) -> int:
        return self._recv.fileno()


def wake_fd(stop: threading.Event) -> int | None:
    """The descriptor that turns readable when `stop` is set (None for a plain Event: loops
    then wake at their own deadlines, as tests that pass one expect)."""
    return stop.fileno() if isinstance(stop, Stop) else None


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
    stop = Stop()
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
