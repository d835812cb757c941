"""pyserial URL handler `sim://NAME?options`: a simulated Arduino inside the host process.

After `serial.protocol_handler_packages.append("powmon.sim")`, `serial.serial_for_url(
"sim://VIC?amps=2.5&ac=50", baudrate=115200, timeout=0.5)` opens a port that answers PowMon's
protocol without any OS device, so it works on Windows too. Opening resets the device and
queues its boot chatter, as the DTR reset of a real open does. A streaming board's frames are
made when a read looks for them, each arriving when its last byte would have crossed the wire
(paced) or as soon as the board's clock has it ready. Devices stay in the `devices`
registry (by name) so that tests can reach the board behind an open port to inject faults,
and so that reopening the same URL finds the same board, as replugging an Arduino does.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from powmon.sim.device import Fault, SignalSpec, SimDevice
from powmon.sim.params import FAULT_OPTIONS, PORT_OPTIONS, parse_options

BITS_PER_BYTE: Final = 10

devices: dict[str, SimDevice] = {}
_holders: dict[str, int] = {}  # open ports per name
_exclusive: set[str] = set()  # names held by an exclusive open
_registry_lock = threading.Lock()


@dataclass
class _Chunk:
    """An answer on a paced wire: byte i arrives at start + (i + 1) * byte_time."""

    data: bytes
    start: float
    byte_time: float
    taken: int = 0


@dataclass(frozen=True)
class UrlOptions:
    """A parsed sim:// URL."""

    name: str
    spec: SignalSpec
    faults: dict[Fault, int] = field(default_factory=dict)
    disconnect_after: int | None = None
    baud: int | None = None
    pace: bool = False


def parse_url(url: str) -> UrlOptions:
    """Parse `sim://NAME?k=v&...`; ValueError names the URL and the bad or unknown parameter."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sim" or not parts.netloc or parts.path not in {"", "/"}:
        raise ValueError(f"expected a URL like 'sim://VIC?amps=2.5&ac=50', got {url!r}")
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    options = dict(pairs)
    if len(options) != len(pairs):
        raise ValueError(f"{url}: a parameter is given twice")
    spec, rest = parse_options(url, options, PORT_OPTIONS)
    faults = {FAULT_OPTIONS[k]: v for k, v in rest.items() if k in FAULT_OPTIONS}
    return UrlOptions(
        name=parts.netloc,
        spec=spec,
        faults=faults,
        disconnect_after=rest.get("disconnect_after"),
        baud=rest.get("baud"),
        pace=bool(rest.get("pace", False)),
    )


def _device_for(opts: UrlOptions) -> SimDevice:
    """The registered board of that name if it has the same signal, else a new one."""
    device = devices.get(opts.name)
    if device is None or device.spec != opts.spec:
        device = SimDevice(opts.spec, opts.name)
        devices[opts.name] = device
    for fault in Fault:
        device.every(fault, opts.faults.get(fault))
    return device


class Serial(SerialBase):
    """The host's end of a simulated board; answers arrive at once or paced like a UART."""

    BAUDRATES = SerialBase.BAUDRATES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._cond = threading.Condition()
        self._rx = bytearray()
        self._pending: deque[_Chunk] = deque()
        self._device: SimDevice | None = None
        self._opts: UrlOptions | None = None
        self._reads_at_open = 0
        self._unplugged = False
        self._cancelled = False
        self._rx_free = 0.0
        self._tx_free = 0.0
        super().__init__(*args, **kwargs)

    # -- open / close ----------------------------------------------------------------------
    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self.port is None:
            raise SerialException("Port must be configured before it can be used.")
        opts = parse_url(self.port)
        self._reconfigure_port()
        with _registry_lock:
            name = opts.name
            if name in _exclusive or (self.exclusive and _holders.get(name)):
                raise SerialException(f"could not exclusively lock port {self.port}: busy")
            _holders[name] = _holders.get(name, 0) + 1
            if self.exclusive:
                _exclusive.add(name)
            device = _device_for(opts)
        self._opts, self._device = opts, device
        device.baud = opts.baud or self.baudrate  # the stream limits follow the line's rate
        self._reads_at_open = device.reads
        self._unplugged = self._cancelled = False
        self._rx_free = self._tx_free = 0.0
        with self._cond:
            self._rx.clear()
            self._pending.clear()
            self._rx += device.boot()
        self.is_open = True

    def close(self) -> None:
        if not self.is_open or self._opts is None:
            return
        self.is_open = False
        with _registry_lock:
            name = self._opts.name
            _holders[name] -= 1
            if not _holders[name]:
                del _holders[name]
                _exclusive.discard(name)
        with self._cond:
            self._cond.notify_all()

    def _reconfigure_port(self) -> None:
        if not isinstance(self.baudrate, int) or not 0 < self.baudrate < 2**32:
            raise ValueError(f"invalid baudrate: {self.baudrate!r}")

    # -- data ------------------------------------------------------------------------------
    def write(self, b: Any, /) -> int:
        """Deliver the request to the board; its answers become readable (now or paced)."""
        device = self._live_device()
        if isinstance(b, str):
            raise TypeError(f"unicode strings are not supported, please encode to bytes: {b!r}")
        data = bytes(memoryview(b))
        answer = device.feed(data)
        opts = self._opts
        if opts is not None and opts.disconnect_after is not None:
            self._unplugged = device.reads - self._reads_at_open >= opts.disconnect_after
        with self._cond:
            self._queue(answer, len(data))
            self._cond.notify_all()
        return len(data)

    def read(self, size: int = 1, /) -> bytes:
        """Up to `size` bytes, waiting at most `timeout` (None: until all `size` are there)."""
        if not self.is_open:
            raise PortNotOpenError()
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                self._pump(now)
                if len(self._rx) >= size or self._cancelled or not self.is_open:
                    break
                if self._unplugged and not self._pending:
                    if not self._rx:
                        raise self._gone()
                    break
                if deadline is not None and now >= deadline:
                    break
                wait = None if deadline is None else deadline - now
                ready = self._next_ready()
                if ready is not None:
                    wait = ready - now if wait is None else min(wait, ready - now)
                self._cond.wait(wait)
            self._cancelled = False
            data = bytes(self._rx[:size])
            del self._rx[:size]
        return data

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        with self._cond:
            self._pump(time.monotonic())
            return len(self._rx)

    @property
    def out_waiting(self) -> int:
        return 0  # requests reach the board at write()

    def reset_input_buffer(self) -> None:
        """Drop what has arrived; bytes still on the (paced) wire arrive later, as on a UART."""
        if not self.is_open:
            raise PortNotOpenError()
        with self._cond:
            self._pump(time.monotonic())
            self._rx.clear()

    def reset_output_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    def flush(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    def cancel_read(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    # -- helpers ---------------------------------------------------------------------------
    def _live_device(self) -> SimDevice:
        if not self.is_open or self._device is None:
            raise PortNotOpenError()
        if self._unplugged:
            raise self._gone()
        return self._device

    def _gone(self) -> SerialException:
        after = self._opts.disconnect_after if self._opts else None
        return SerialException(f"{self.port}: device disconnected (disconnect_after={after})")

    def _byte_time(self) -> float:
        opts = self._opts
        if opts is None or (opts.baud is None and not opts.pace):
            return 0.0
        return BITS_PER_BYTE / (opts.baud or self.baudrate)

    def _queue(self, answer: bytes, request_len: int) -> None:
        bt = self._byte_time()
        if not bt:
            self._rx += answer
            return
        # The board answers once the request's last byte has crossed the wire.
        self._rx_free = max(time.monotonic(), self._rx_free) + request_len * bt
        start = max(self._rx_free, self._tx_free)
        self._tx_free = start + len(answer) * bt
        if answer:
            self._pending.append(_Chunk(answer, start, bt))

    def _pump(self, now: float) -> None:
        """Take what the board sent on its own; move bytes whose wire time passed to `_rx`."""
        device = self._device
        if device is not None and not self._unplugged:
            for ready, data in device.poll(now):
                self._queue_at(data, ready)
        while self._pending:
            chunk = self._pending[0]
            due = min(len(chunk.data), max(0, int((now - chunk.start) / chunk.byte_time)))
            self._rx += chunk.data[chunk.taken : due]
            chunk.taken = max(chunk.taken, due)
            if chunk.taken < len(chunk.data):
                return
            self._pending.popleft()

    def _queue_at(self, data: bytes, ready: float) -> None:
        """Bytes the board had ready at `ready`: they cross the wire after what is queued."""
        bt = self._byte_time()
        if not bt:
            self._rx += data
            return
        start = max(ready, self._tx_free)
        self._tx_free = start + len(data) * bt
        if data:
            self._pending.append(_Chunk(data, start, bt))

    def _next_ready(self) -> float | None:
        """When the next byte becomes readable: on the wire, or made by the board."""
        if self._pending:
            chunk = self._pending[0]
            return chunk.start + (chunk.taken + 1) * chunk.byte_time
        device = self._device
        return None if device is None or self._unplugged else device.next_due()

    # -- modem lines: nothing to drive -----------------------------------------------------
    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True
