"""A simulated Arduino behind a real pseudo-terminal, so hosts run their real pyserial code.

POSIX only (os.openpty, termios, poll). The simulator keeps only the master side open: the
kernel then reports POLLHUP while no host has the slave open, which is how the device notices
a new open and "reboots" (resets its modes, sends boot chatter before its first answer) as an
Arduino does after the DTR pulse. `unplug()` closes the master, so an open host sees EOF or EIO
(pyserial raises SerialException), and the slave device disappears as a USB port does.
A streaming device's frames are written when their last byte would have crossed the wire;
with no host on the port they are lost, as a USB serial chip loses them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import threading
import time
import tty
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Final

from powmon.sim.device import SimDevice

log = logging.getLogger(__name__)

POLL_MS: Final = 100  # longest wait in the serving loop, so unplug/close are prompt
HUP_WAIT: Final = 0.02  # re-check period while no host has the port open
BITS_PER_BYTE: Final = 10  # start + 8 data + stop


class _Session:
    """One plug-in: a master fd and the thread serving it, until unplug."""

    def __init__(self, master: int, device: SimDevice, baud: int | None) -> None:
        self.master = master
        self.device = device
        self.stop = threading.Event()
        self.host_open = False  # as last seen by the serving thread
        self._byte_time = BITS_PER_BYTE / baud if baud else 0.0
        self._rx_free = 0.0  # when the request wire is idle again
        self._tx_free = 0.0  # when the answer wire is idle again
        self._out: deque[tuple[float, bytes]] = deque()  # stream bytes and when they are due
        self.thread = threading.Thread(
            target=self._serve, name=f"pty-sim-{device.sensor_id}", daemon=True
        )

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        while not self.stop.is_set():
            events = poller.poll(self._wait_ms())
            mask = events[0][1] if events else 0
            data = self._read() if mask & select.POLLIN else b""
            if data:
                chatter = b"" if self.host_open else self.device.boot()
                self.host_open = True
                self._flush_out(wait=True)  # frames already on the wire come first
                self._send(chatter + self.device.feed(data), len(data))
            elif mask & (select.POLLHUP | select.POLLERR):
                self.host_open = False
                self.stop.wait(HUP_WAIT)
            self._stream_out()

    def _wait_ms(self) -> int:
        """Until the next stream bytes are due (or the device has some), at most POLL_MS."""
        due = self._out[0][0] if self._out else self.device.next_due()
        if due is None:
            return POLL_MS
        return max(0, min(POLL_MS, math.ceil((due - time.monotonic()) * 1000)))

    def _stream_out(self) -> None:
        """Queue what the device sent on its own, paced by the wire; write what is due."""
        for ready, data in self.device.poll():
            if not data or not self.host_open:
                continue  # nobody on the port: the bytes are lost
            due = ready
            if self._byte_time:  # the last byte arrives after all of them crossed the wire
                due = self._tx_free = max(ready, self._tx_free) + len(data) * self._byte_time
            self._out.append((due, data))
        self._flush_out(wait=False)

    def _flush_out(self, wait: bool) -> None:
        """Write queued stream bytes that are due (all of them, waiting if `wait`)."""
        now = time.monotonic()
        chunks: list[bytes] = []
        while self._out and (wait or self._out[0][0] <= now):
            due, data = self._out.popleft()
            if due > now:
                if self.stop.wait(due - now):
                    return
                now = time.monotonic()
            chunks.append(data)
        if chunks:
            self._write(b"".join(chunks))

    def _read(self) -> bytes:
        try:
            return os.read(self.master, 4096)
        except OSError as err:  # EIO: the host closed the slave side
            if err.errno not in {errno.EIO, errno.EAGAIN}:
                log.warning("sensor=%s pty read failed: %s", self.device.sensor_id, err)
            return b""

    def _send(self, data: bytes, request_len: int) -> None:
        """Write an answer; with a baud rate, no faster than a UART could carry it."""
        if not self._byte_time:
            self._write(data)
            return
        bt = self._byte_time
        # The request's bytes only now "arrived" in full; the board answers after the last one.
        self._rx_free = max(time.monotonic(), self._rx_free) + request_len * bt
        start = max(self._rx_free, self._tx_free)
        self._tx_free = start + len(data) * bt
        done = 0
        while done < len(data):
            due = min(len(data), int((time.monotonic() - start) / bt))
            if due > done:
                self._write(data[done:due])
                done = due
            elif self.stop.wait(start + (done + 1) * bt - time.monotonic()):
                return

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except BlockingIOError:  # the host is not reading: a real UART loses the bytes too
            log.debug("sensor=%s pty full; %d bytes lost", self.device.sensor_id, len(data))
        except OSError as err:
            log.debug("sensor=%s pty write failed: %s", self.device.sensor_id, err)


class PtySimulator:
    """Serve a SimDevice on a pseudo-terminal; optionally behind a stable symlink."""

    def __init__(
        self, device: SimDevice, baud: int | None = None, link: Path | None = None
    ) -> None:
        if baud is not None and baud <= 0:
            raise ValueError(f"baud must be > 0, got {baud}")
        self.device = device
        self.baud = baud
        if baud is not None:
            device.baud = baud  # the stream limits follow the line's rate
        self.link = link
        self.slave_name = ""
        self._session: _Session | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        """What a host opens: the link if there is one (stable across replugs), else the pty."""
        return str(self.link) if self.link is not None else self.slave_name

    @property
    def plugged(self) -> bool:
        return self._session is not None

    @property
    def host_open(self) -> bool:
        """Whether the device believes a host has the port open (it reboots on the next open).

        Known only from POLLHUP, checked every 20 ms: a close and reopen faster than that may
        not be seen as a new open, so tests wait for this to turn False before reopening.
        """
        session = self._session
        return session is not None and session.host_open

    def start(self) -> PtySimulator:
        with self._lock:
            if self._session is not None:
                raise RuntimeError(f"simulator for {self.device.sensor_id!r} already started")
            self._plug()
        return self

    def unplug(self) -> None:
        """Vanish like a pulled USB cable: the open port fails, the device node goes away."""
        with self._lock:
            self._unplug()

    def replug(self) -> None:
        """Come back on a new pty; the link (if any) points at it, so reopening the path works."""
        with self._lock:
            self._unplug()
            self._plug()

    def close(self) -> None:
        self.unplug()

    def __enter__(self) -> PtySimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _plug(self) -> None:
        link = self.link
        if link is not None and link.exists() and not link.is_symlink():
            raise FileExistsError(f"{link} exists and is not a symlink; not replacing it")
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no CR/LF translation: the host's bytes arrive unchanged
            self.slave_name = os.ttyname(slave)
        finally:
            os.close(slave)  # only the host holds the slave: POLLHUP then tells us it closed
        os.set_blocking(master, False)
        if link is not None:
            self._point_link(link)
        self._session = _Session(master, self.device, self.baud)
        self._session.thread.start()
        log.info("sensor=%s pty=%s", self.device.sensor_id, self.slave_name)

    def _point_link(self, link: Path) -> None:
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.slave_name)
        tmp.replace(link)  # atomic: a host never sees the link missing during a replug

    def _unplug(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        session.stop.set()
        session.thread.join()
        if self.link is not None and self.link.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        os.close(session.master)
        log.info("sensor=%s unplugged", self.device.sensor_id)
