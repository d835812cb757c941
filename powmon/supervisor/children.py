"""One supervised child process: how to start it, stop it gracefully, and when to restart it.

Children run in their own process group, so that Ctrl-C in a terminal reaches only the
supervisor, which then stops them in order (readers first, broker last) instead of all at once.
Each child gets a lifeline (common.lifeline): when the supervisor dies, however it dies, its
children see the lifeline close and stop on their own, flushing what they hold; and a child's
progress comes down its lifeline, never over the bus it may be waiting for.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from powmon.base.processes import ProcessSpec, Watch
from powmon.common import lifeline, publishmark
from powmon.common.backoff import backoff
from powmon.common.lifeline import Beat
from powmon.common.runtime import EXIT_USAGE

log = logging.getLogger(__name__)

# A child that ran this long is considered healthy again: its restart backoff starts over.
STABLE_AFTER_S = 30.0
IS_WINDOWS = sys.platform == "win32"


@dataclass(slots=True)
class Child:
    """Runtime state of one child: the process, its restart schedule and its liveness."""

    spec: ProcessSpec
    argv: tuple[str, ...]
    backoff_max: float
    popen: subprocess.Popen[bytes] | None = None
    token: str = ""  # of its current lifeline
    mark: Path | None = None  # a reader's publish mark (common.publishmark)
    started_at: float = 0.0
    restart_at: float | None = 0.0
    restarts: int = 0
    last_progress: float = 0.0
    progress: int = -1  # last value its lifeline reported; -1: nothing since (re)start
    session: str = ""  # a reader's session and next seq, as its lifeline last said
    seq: int = 0
    ready: bool = False  # its heartbeat was seen on the bus since (re)start
    recovering: int = 0  # a sink's readings still being asked for, as its last heartbeat said
    waiting: bool = False  # a reader retrying a port that cannot be opened, as its lifeline said
    _delays: Iterator[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._delays = backoff(initial=0.5, cap=self.backoff_max)

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def refused(self) -> bool:
        """It exited 2 (misconfiguration, or something it must own is taken) before it made
        any progress (a reader's first beat says 0 readings; it may refuse its port after
        it): restarting it would only fail again."""
        return (
            self.popen is not None
            and self.popen.poll() == EXIT_USAGE
            and self.progress <= 0
        )

    def start(self, now: float, line: tuple[str, str], mark: Path | None = None) -> None:
        """Start the process with its lifeline `line` (environment value, token) and, for a
        reader, a fresh publish mark (common.publishmark)."""
        env = dict(os.environ)
        env[lifeline.ENV], self.token = line
        self.mark = mark
        if mark is not None:
            publishmark.create(mark)
            env[publishmark.ENV] = str(mark)
        kwargs: dict[str, object] = {"env": env}
        if IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined,unused-ignore]
        else:
            kwargs["start_new_session"] = True
        self.popen = subprocess.Popen(self.argv, **kwargs)  # type: ignore[call-overload]
        self.started_at = now
        self.last_progress = now
        self.progress = -1
        self.session, self.seq = "", 0
        self.ready = False
        self.recovering = 0
        self.waiting = False
        self.restart_at = None
        log.info("started %s pid=%d", self.key, self.popen.pid)

    def schedule_restart(self, now: float, why: str) -> None:
        """Plan the next start with capped exponential backoff, and say so."""
        if now - self.started_at > STABLE_AFTER_S:
            self._delays = backoff(initial=0.5, cap=self.backoff_max)
        delay = next(self._delays)
        self.restart_at = now + delay
        self.restarts += 1
        log.warning("%s %s; restarting in %.1fs (restart %d)", self.key, why, delay,
                    self.restarts)

    def note_progress(self, beat: Beat, now: float) -> None:
        """Record a lifeline beat; progress is a change of the count (readings, for a reader).

        A reader whose port cannot be opened takes no readings, yet it is doing its job: it
        retries the port with its own backoff, and a restart would only make a new empty
        session. Each of its beats counts as progress, so it is left alone while it beats,
        and judged stalled again once its beats stop or once the port opened and no reading
        follows for STALL_TIMEOUT."""
        if beat.session:
            self.session, self.seq = beat.session, beat.seq
        if beat.waiting != self.waiting:
            self.waiting = beat.waiting
            if beat.waiting:
                log.warning("%s cannot open its port; it retries by itself and is left "
                            "running (powmon status says why)", self.key)
            else:
                log.info("%s opened its port", self.key)
        if beat.progress != self.progress or beat.waiting:
            self.progress = beat.progress
            self.last_progress = now

    def stalled(self, now: float, stall_timeout: float) -> bool:
        return (
            self.spec.watch is Watch.PROGRESS
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
            log.debug("signal to %s failed: %s", self.key, err)

    def kill(self) -> None:
        if self.running and self.popen is not None:
            log.warning("%s did not stop in time; killing pid=%d", self.key, self.popen.pid)
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
