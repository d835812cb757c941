"""Real servers (Mosquitto, influxd) that tests start on free loopback ports."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers import Proc, wait_until


class ServerProc:
    """A server child process that can be stopped (or killed) and started again on the same
    port and files: an outage. Subclasses give argv() and ready()."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether it answers yet (called until true, or the deadline)."""
        raise NotImplementedError

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc(self.argv(), self.root / f"{self.name}-{self.starts}.log")
        try:
            wait_until(self._up, 30, interval=0.05, what=f"{self.name} answering")
        except AssertionError:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc is not None and self.proc.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.proc.output()[-2000:]}")
        return self.ready()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(sig)
            self.proc = None
