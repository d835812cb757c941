"""One supervised child process: how to start it, stop it gracefully, and when to restart it.

Children run in their own process group, so that Ctrl-C in a terminal reaches only the
supervisor, which then stops them in order (readers first, broker last) instead of all at once.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from powmon.common.backoff import backoff

log = logging.getLogger(__name__)

# A child that ran this long is considered healthy again: its restart backoff starts over.
STABLE_AFTER_S = 30.0
IS_WINDOWS = sys.platform == "win32"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What to run; `key` names the child in logs and matches its heartbeat (process/ident)."""

    key: str
    argv: tuple[str, ...]
    process: str
    ident: str
    watch_stall: bool = False


@dataclass(slots=True)
class Child:
    """Runtime state of one child: the process, its restart schedule and its liveness."""

    spec: ChildSpec
    backoff_max: float
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = 0.0
    restarts: int = 0
    last_progress: float = 0.0
    last_count: int = -1
    _delays: Iterator[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._delays = backoff(initial=0.5, cap=self.backoff_max)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, now: float) -> None:
        kwargs: dict[str, object] = {}
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined,unused-ignore]
        else:
            kwargs["start_new_session"] = True
        self.popen = subprocess.Popen(self.spec.argv, **kwargs)  # type: ignore[call-overload]
        self.started_at = now
        self.last_progress = now
        self.last_count = -1
        self.restart_at = None
        log.info("started %s pid=%d", self.spec.key, self.popen.pid)

    def schedule_restart(self, now: float, why: str) -> None:
        """Plan the next start with capped exponential backoff, and say so."""
        if now - self.started_at > STABLE_AFTER_S:
            self._delays = backoff(initial=0.5, cap=self.backoff_max)
        delay = next(self._delays)
        self.restart_at = now + delay
        self.restarts += 1
        log.warning(
            "%s %s; restarting in %.1fs (restart %d)", self.spec.key, why, delay, self.restarts
        )

    def note_progress(self, count: int, now: float) -> None:
        """Record a heartbeat's reading count; progress is a change of it."""
        if count != self.last_count:
            self.last_count = count
            self.last_progress = now

    def stalled(self, now: float, stall_timeout: float) -> bool:
        return (
            self.spec.watch_stall
            and self.running
            and now - max(self.last_progress, self.started_at) > stall_timeout
        )

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM; CTRL_BREAK on Windows, where SIGTERM is a kill)."""
        if not self.running or self.popen is None:
            return
        try:
            if IS_WINDOWS:
                self.popen.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined,unused-ignore]
            else:
                self.popen.send_signal(signal.SIGTERM)
        except OSError as err:
            log.debug("signal to %s failed: %s", self.spec.key, err)

    def kill(self) -> None:
        if self.running and self.popen is not None:
            log.warning("%s did not stop in time; killing pid=%d", self.spec.key, self.popen.pid)
            self.popen.kill()


def stop_group(children: Sequence[Child], grace: float) -> None:
    """Ask a group of children to stop together, wait up to `grace`, then kill what is left."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    while any(c.running for c in children) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling child exit: there is no portable wait-for-any with timeout
    for child in children:
        child.kill()
        if child.popen is not None:
            child.popen.wait()


def reader_argv(config: str, port: str, sensor_id: str) -> tuple[str, ...]:
    return (
        sys.executable, "-m", "powmon.readers", "--port", port, "--sensor-id", sensor_id,
        "--config", config,
    )  # fmt: skip


def module_argv(module: str, config: str) -> tuple[str, ...]:
    return (sys.executable, "-m", module, "--config", config)
