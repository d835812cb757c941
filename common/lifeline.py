"""The lifeline between `powmon run` and each child it starts: death of the parent, liveness
of the child, both without the bus.

The supervisor listens on a loopback TCP port and gives each child
`POWMON_LIFELINE=<port>:<token>:<grace>` in its environment. The child connects at start and
from then on:

- when the connection ends (EOF or an error), the supervisor is gone, however it died (kill -9,
  an OOM kill, a closed terminal): the kernel closes the supervisor's end, so a thread blocked
  on this one wakes at once, and the child stops as on SIGTERM, flushing what it holds, after
  `grace` seconds (ORPHAN_STEP_S per later group: powmon.supervisor.run). The graces keep the
  supervisor's stop order without it: readers stop at once (grace 0, within a fraction of a
  second), then each group a second after the one before: the web page (if any), the writer
  and uplink (having taken the readers' last readings), the broker last (having carried them),
  2 s after the death (3 s with the web page);
- its heartbeat also reports its progress here (`beat <n> [<session> <seq> [waiting]]`, n =
  readings taken for a reader), so the supervisor judges a reader silent by the reader's own
  word and never by the bus: a frozen broker makes every heartbeat late, but not a single
  lifeline beat; and when a reader dies, the supervisor knows how far its session got
  (schema.ReaderEnd). `waiting` says the reader is retrying a port that cannot be opened
  (ReaderProgress.waiting_for_port): it takes no readings, yet it is not stalled.

Why a loopback socket and not an inherited pipe: it is the same code on Windows (no handle
inheritance), it carries both directions, and the kernel closes it on any death of either end.
The token keeps other local programs from posing as a child.

A child started by hand or by supervisord has no POWMON_LIFELINE and behaves as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import Final, NamedTuple

log = logging.getLogger(__name__)

ENV: Final = "POWMON_LIFELINE"
WAITING: Final = "waiting"  # the last word of a beat while a reader retries its port
CONNECT_TIMEOUT_S: Final = 5.0

_current: Lifeline | None = None  # the one lifeline of this process, set by `attach()`


class Lifeline:
    """A child's end: reports progress; sets `stop` when the supervisor goes away."""

    def __init__(self, sock: socket.socket, stop: threading.Event, grace: float = 0.0) -> None:
        self._sock = sock
        self._stop = stop
        self._grace = grace
        self._lock = threading.Lock()
        self.lost = False
        self._thread = threading.Thread(target=self._watch, name="lifeline", daemon=True)
        self._thread.start()

    def report(
        self, progress: int, session: str = "", seq: int = 0, *, waiting: bool = False
    ) -> None:
        """Tell the supervisor how far this process got (a reader: its session and next seq
        too, and `waiting` while it retries a port that cannot be opened: alive, not stalled);
        never blocks (a frozen supervisor just misses beats)."""
        tail = f" {session} {seq}" + (f" {WAITING}" if waiting else "") if session else ""
        line = f"beat {progress}{tail}\n".encode()
        with self._lock, contextlib.suppress(OSError):
            self._sock.send(line, socket.MSG_DONTWAIT if hasattr(socket, "MSG_DONTWAIT") else 0)

    def _watch(self) -> None:
        """Block on the socket: the supervisor sends nothing, so any return means it is gone."""
        with contextlib.suppress(OSError):
            while self._sock.recv(64):
                pass
        self.lost = True
        if not self._stop.is_set():
            log.warning("the supervisor is gone (lifeline closed); stopping in %.1fs",
                        self._grace)
            self._stop.wait(self._grace)
            self._stop.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def attach(stop: threading.Event, environ: dict[str, str] | None = None) -> Lifeline | None:
    """Connect this process's lifeline if its supervisor gave one; None when started alone.

    A lifeline that cannot be connected means the supervisor is already gone: `stop` is set.
    """
    global _current  # noqa: PLW0603 - one lifeline per process, quarantined in this module
    value = (os.environ if environ is None else environ).get(ENV)
    if not value:
        return None
    port, token, grace = [*value.split(":"), "", ""][:3]
    try:
        sock = socket.create_connection(("127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S)
        sock.settimeout(None)
        sock.sendall(f"hello {token} {os.getpid()}\n".encode())
        _current = Lifeline(sock, stop, float(grace or 0))
    except (OSError, ValueError) as err:
        log.warning("cannot reach the supervisor's lifeline %r: %s; stopping", value, err)
        stop.set()
        return None
    return _current


def current() -> Lifeline | None:
    """The lifeline `attach()` connected in this process, if any (the heartbeat reports on it)."""
    return _current


class Beat(NamedTuple):
    """One progress report from a child's lifeline."""

    token: str
    progress: int
    session: str = ""
    seq: int = 0
    waiting: bool = False  # a reader retrying a port that cannot be opened


class LifelineServer:
    """The supervisor's end: one listening loopback socket, one connection per child.

    `issue()` makes the environment value for a new child; `read()` (call it when the poller
    says the sockets are readable) returns the beats received since, as (token, progress).
    """

    MAX_LINE: Final = 256

    def __init__(self) -> None:
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listen.bind(("127.0.0.1", 0))
        self._listen.listen(64)
        self._listen.setblocking(False)
        self.port = int(self._listen.getsockname()[1])
        self._tokens: set[str] = set()
        self._conns: dict[socket.socket, tuple[str, bytes]] = {}  # sock -> (token, partial)
        self.refused = 0

    def issue(self, grace: float = 0.0) -> tuple[str, str]:
        """(environment value, token) for one child start; `grace`: how long the child goes on
        once the supervisor is gone."""
        token = os.urandom(8).hex()  # not `secrets`: it loads OpenSSL (~3 MiB per reader)
        self._tokens.add(token)
        return f"{self.port}:{token}:{grace:g}", token

    def retire(self, token: str) -> None:
        """The child of this token is gone: forget the token, close its connection."""
        self._tokens.discard(token)
        for sock, (tok, _) in list(self._conns.items()):
            if tok == token:
                self._drop(sock)

    def sockets(self) -> list[socket.socket]:
        return [self._listen, *self._conns]

    def read(self) -> list[Beat]:
        """Accept new connections and take every complete line; never blocks."""
        self._accept()
        beats: list[Beat] = []
        for sock in list(self._conns):
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._drop(sock)
                continue
            beats += self._lines(sock, data)
        return beats

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.debug("lifeline accept failed: %s", err)
                return
            sock.setblocking(False)
            self._conns[sock] = ("", b"")

    def _lines(self, sock: socket.socket, data: bytes) -> list[Beat]:
        token, partial = self._conns[sock]
        *lines, rest = (partial + data).split(b"\n")
        if len(rest) > self.MAX_LINE:
            self._drop(sock)
            return []
        beats: list[Beat] = []
        for line in lines:
            word, *args = line.decode("utf-8", "replace").split(" ")
            if word == "hello" and not token and args:
                token = args[0]
                if token not in self._tokens:  # not one of our children
                    self.refused += 1
                    self._drop(sock)
                    return beats
            elif word == "beat" and token and args and all(a.isdigit() for a in args[::2]):
                if len(args) == 3 or (len(args) == 4 and args[3] == WAITING):
                    beats.append(Beat(token, int(args[0]), args[1], int(args[2]),
                                      waiting=len(args) == 4))
                elif len(args) == 1:
                    beats.append(Beat(token, int(args[0])))
        self._conns[sock] = (token, rest)
        return beats

    def _drop(self, sock: socket.socket) -> None:
        self._conns.pop(sock, None)
        with contextlib.suppress(OSError):
            sock.close()

    def close(self) -> None:
        for sock in list(self._conns):
            self._drop(sock)
        with contextlib.suppress(OSError):
            self._listen.close()
