"""Two hosts for a test, and what travels between them.

Preferably two network namespaces joined by a veth pair (`ip netns`, needs root or
CAP_NET_ADMIN): host A at 10.213.0.1, host B at 10.213.0.2, each with its own loopback, so a
process in B reaches A only across the veth, where an AF_PACKET socket in A records every
frame (tests/capture.py). Where namespaces cannot be made: two loopback addresses, A at
127.0.0.2 and B at 127.0.0.1, with B's publishers reaching A's broker through a TCP relay the
test runs, which records what it carries (that leg only).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import Proc, wait_until

CAPTURE = Path(__file__).resolve().parent / "capture.py"
_names = itertools.count()


@dataclass
class Hosts:
    """Host A (the broker's) and host B (a reader's); `seen_as_b` is the address A sees B's
    connections come from."""

    mode: str
    a: str
    b: str
    seen_as_b: str
    namespaces: tuple[str, str] | None = None
    relay: Relay | None = None
    capture_file: Path | None = None
    procs: list[Proc] = field(default_factory=list)

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` as run on host "a" or "b"."""
        if self.namespaces is None:
            return list(argv)
        return ["ip", "netns", "exec", self.namespaces[host == "b"], *argv]

    def frontend_for_b(self, port: int) -> str:
        """Where B's publishers reach A's broker frontend (through the relay on loopback)."""
        if self.relay is not None:
            return f"tcp://127.0.0.1:{self.relay.start(('127.0.0.2', port))}"
        return f"tcp://{self.a}:{port}"

    def captured(self) -> bytes:
        if self.relay is not None:
            return self.relay.seen()
        assert self.capture_file is not None
        return self.capture_file.read_bytes()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def _ip_quiet(*args: str) -> None:
    """Clean-up: whatever is already gone stays gone."""
    subprocess.run(["ip", *args], check=False, capture_output=True, timeout=20)


@contextlib.contextmanager
def namespaces(tmp: Path) -> Iterator[Hosts]:
    """Two namespaces and a veth pair, removed again however the test ends. Raises
    OSError/CalledProcessError when this machine does not allow them."""
    if shutil.which("ip") is None:
        raise FileNotFoundError("the ip command (iproute2) is not installed")
    tag = f"{os.getpid() % 100_000}x{next(_names)}"
    ns_a, ns_b, veth_a, veth_b = f"pmA{tag}", f"pmB{tag}", f"pva{tag}", f"pvb{tag}"
    made: list[str] = []
    procs: list[Proc] = []
    try:
        for ns in (ns_a, ns_b):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        for ns, veth, addr in ((ns_a, veth_a, "10.213.0.1"), (ns_b, veth_b, "10.213.0.2")):
            _ip("link", "set", veth, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", veth)
            _ip("-n", ns, "link", "set", veth, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        out = tmp / "capture.bin"
        a, b = "10.213.0.1", "10.213.0.2"
        hosts = Hosts("netns", a, b, b, (ns_a, ns_b), capture_file=out, procs=procs)
        argv = hosts.argv("a", [sys.executable, str(CAPTURE), veth_a, str(out)])
        capture = Proc(argv, tmp / "capture.log")
        procs.append(capture)
        ready = out.with_suffix(".ready")
        wait_until(lambda: ready.exists() or capture.popen.poll() is not None, what="capture")
        assert capture.popen.poll() is None, capture.output()
        yield hosts
    finally:
        for proc in procs:
            proc.stop()
        for ns in made:
            _ip_quiet("netns", "del", ns)
        _ip_quiet("link", "del", veth_a)  # gone with its namespace, unless set-up broke early


@contextlib.contextmanager
def loopback_hosts() -> Iterator[Hosts]:
    """A at 127.0.0.2, B at 127.0.0.1, B's frontend traffic through a recording relay."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))  # OSError where 127.0.0.2 is not a loopback address
    relay = Relay()
    try:
        yield Hosts("loopback", "127.0.0.2", "127.0.0.1", "127.0.0.1", relay=relay)
    finally:
        relay.close()


class Relay:
    """A TCP relay from a loopback port to `upstream` that keeps a copy of both directions."""

    def __init__(self) -> None:
        self._seen = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._upstream: tuple[str, int] | None = None
        self._socks: list[socket.socket] = []
        self._closed = False

    def start(self, upstream: tuple[str, int]) -> int:
        self._upstream = upstream
        threading.Thread(target=self._accept, daemon=True, name="relay").start()
        return int(self._listener.getsockname()[1])

    def seen(self) -> bytes:
        with self._lock:
            return bytes(self._seen)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            assert self._upstream is not None
            server = socket.create_connection(self._upstream, timeout=5)
            server.settimeout(None)
            self._socks += (client, server)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                with self._lock:
                    self._seen += chunk
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
