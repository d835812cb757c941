"""Record every frame on one network interface into a file, until SIGTERM (a tiny tcpdump).

Run as a script inside a network namespace (`ip netns exec NS python tests/capture.py IFACE
OUT`): an AF_PACKET socket sees what crosses the interface, both directions; each frame is
appended to OUT as it comes, and OUT.ready appears once the socket listens. It needs
CAP_NET_RAW, which a test that could make the namespace has. Standalone on purpose: it
imports nothing from PowMon or the tests.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path
from types import FrameType

ETH_P_ALL = 0x0003


def main(iface: str, out: Path) -> None:
    running = True

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    sock.settimeout(0.2)
    with out.open("ab", buffering=0) as sink:
        out.with_suffix(".ready").touch()
        while running:
            try:
                sink.write(sock.recv(65535))
            except TimeoutError:
                continue
            except InterruptedError:
                break
    sock.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
