"""The real PowMon firmware on a simulated ATmega328P, reachable through a real pseudo-terminal.

`build()` runs `make -C firmware all harness` (seconds; make skips what is up to date) and
`SimBoard` starts `firmware/build/powmon_sim` as a child process:

    with SimBoard(built.elf, mv=2600) as port:        # A0 at 2.6 V, AREF 5 V
        serial.Serial(port, 115200, timeout=2)         # 'read \\n' -> b'532\\r\\n'

`adc_log=path` makes the harness list every conversion ("CHANNEL COUNT" lines, in order), and
`reset()`, `flip(k)`, `drop(k)` inject faults (harness commands on its stdin).

Linux only (pseudo-terminals, simavr), like the rest of the simulator.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = REPO / "firmware"
BUILD_DIR = FIRMWARE_DIR / "build"
ELF = BUILD_DIR / "powmon.elf"
HARNESS = BUILD_DIR / "powmon_sim"
ARDUINO_CORE = Path("/usr/share/arduino/hardware/arduino/avr/cores/arduino/Arduino.h")
BAUD = 115200
FAST_BAUD = 1_000_000  # a second build, where the ADC and not the wire is the limit
AREF_MV = 5000

Sine = tuple[float, float, float]
"""offset mV, amplitude mV, frequency Hz"""


class FirmwareUnavailable(RuntimeError):
    """The AVR toolchain, the Arduino core or simavr is not installed: tests skip with this."""


@dataclass(frozen=True, slots=True)
class Built:
    elf: Path
    harness: Path


def missing_tools() -> list[str]:
    """What `firmware/install-deps.sh` would install, as far as it is missing here."""
    tools = ("make", "avr-gcc", "avr-g++", "avr-objcopy", "cc", "pkg-config")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not ARDUINO_CORE.is_file():
        missing.append(f"Arduino core ({ARDUINO_CORE.parent})")
    if shutil.which("pkg-config"):
        for lib in ("simavr", "libelf"):
            if subprocess.run(["pkg-config", "--exists", lib], check=False).returncode != 0:
                missing.append(f"{lib} (pkg-config)")
    return missing


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """An exclusive lock on firmware/build/.lock for as long as a build runs: two makes in
    one folder race on its intermediate files (sketch.flags, core.a)."""
    folder = FIRMWARE_DIR / "build"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(timeout: float = 300.0, baud: int | None = None) -> Built:
    """Build firmware and harness; a missing tool is FirmwareUnavailable, a failed build is not.

    `baud` builds the firmware for another rate, in its own folder (build/baud-N/).
    """
    missing = missing_tools()
    if missing:
        raise FirmwareUnavailable(
            f"firmware toolchain missing: {', '.join(missing)}; run firmware/install-deps.sh"
        )
    argv = ["make", "-C", str(FIRMWARE_DIR), "all", "harness"]
    elf = ELF
    if baud is not None:
        folder = f"build/baud-{baud}"
        argv = ["make", "-C", str(FIRMWARE_DIR), f"BUILD={folder}", f"BAUD={baud}", "all"]
        elf = FIRMWARE_DIR / folder / "powmon.elf"
    with _build_lock():  # one make at a time: pytest-xdist workers share firmware/build
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    if proc.returncode != 0:
        command = " ".join(argv[:3])
        raise RuntimeError(f"{command} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return Built(elf, HARNESS)


def ideal_count(mv: float, aref_mv: float = AREF_MV) -> int:
    """What a perfect 10-bit ADC reads for `mv`, clipped to 0..1023."""
    return max(0, min(1023, round(mv / aref_mv * 1024)))


def harness_argv(
    harness: Path,
    elf: Path,
    inputs: Mapping[int, float | Sine],
    aref_mv: int,
    speed: float,
    adc_log: Path | None = None,
) -> list[str]:
    argv = [str(harness), "--aref-mv", str(aref_mv), "--speed", str(speed)]
    if adc_log is not None:
        argv += ["--adc-log", str(adc_log)]
    for channel, value in sorted(inputs.items()):
        argv += ["--ch", str(channel)]
        if isinstance(value, tuple):
            argv += ["--sine-mv", ":".join(str(v) for v in value)]
        else:
            argv += ["--mv", str(value)]
    return [*argv, str(elf)]


class SimBoard:
    """A simulated board as a context manager: entering starts it and gives its pty path.

    `mv` or `sine` drive A0; `inputs` drives any of A0..A5 ({3: 1200.0, 1: (2500, 800, 60)}).
    Inputs not given read 0 V. `speed` 1 keeps simulated time in step with the wall clock.
    """

    def __init__(
        self,
        elf: Path | str = ELF,
        mv: float | None = None,
        sine: Sine | None = None,
        *,
        inputs: Mapping[int, float | Sine] | None = None,
        aref_mv: int = AREF_MV,
        speed: float = 1.0,
        harness: Path | str = HARNESS,
        start_timeout: float = 15.0,
        adc_log: Path | None = None,
    ) -> None:
        if mv is not None and sine is not None:
            raise ValueError("give A0 either a constant `mv` or a `sine`, not both")
        chosen: dict[int, float | Sine] = dict(inputs or {})
        if mv is not None:
            chosen[0] = mv
        if sine is not None:
            chosen[0] = sine
        self.argv = harness_argv(Path(harness), Path(elf), chosen, aref_mv, speed, adc_log)
        self.adc_log = adc_log
        self.start_timeout = start_timeout
        self.port = ""
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_path = Path()

    def __enter__(self) -> str:
        fd, name = tempfile.mkstemp(prefix="powmon-sim-", suffix=".log")
        self._log_path = Path(name)
        with os.fdopen(fd, "wb") as log:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                start_new_session=True,
            )
        try:
            self.port = self._wait_for_pty()
        except BaseException:
            self.stop()
            raise
        return self.port

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def command(self, line: str) -> None:
        """Send one fault command to the harness (see firmware/harness/powmon_sim.c)."""
        assert self.popen is not None and self.popen.stdin is not None, "board not started"
        self.popen.stdin.write(line.encode("ascii") + b"\n")
        self.popen.stdin.flush()

    def reset(self, timeout: float = 10.0) -> None:
        """Reset the MCU, as its reset pin does: the firmware starts again, not streaming.

        Returns once the harness has done it, so that what is sent next reaches the new boot.
        """
        done = self.output().count("RESET\n") + 1
        self.command("reset")
        deadline = time.monotonic() + timeout
        while self.output().count("RESET\n") < done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"powmon_sim did not reset in {timeout:.0f}s")
            time.sleep(0.01)  # polling a file with a deadline, as _wait_for_pty

    def flip(self, k: int) -> None:
        """Invert one bit of the k-th byte the board sends from now (never a 0xA5 byte)."""
        self.command(f"flip {k}")

    def drop(self, k: int) -> None:
        """Lose the k-th byte the board sends from now (never a 0xA5 byte)."""
        self.command(f"drop {k}")

    def conversions(self) -> list[tuple[int, int]]:
        """(channel, count) of every conversion so far, from the harness's ADC log."""
        if self.adc_log is None or not self.adc_log.exists():
            return []
        lines = self.adc_log.read_text(encoding="ascii").splitlines()
        return [(int(ch), int(count)) for ch, count in (line.split() for line in lines)]

    def output(self) -> str:
        """What the harness printed (stdout and stderr), for failure messages."""
        try:
            return self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _wait_for_pty(self) -> str:
        assert self.popen is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if line.startswith("PTY "):
                    return line.split(" ", 1)[1].strip()
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"powmon_sim exited with {self.popen.returncode}: {self.output().strip()}"
                )
            time.sleep(0.01)  # polling a file with a deadline; the harness prints once
        raise TimeoutError(f"powmon_sim printed no PTY line in {self.start_timeout:.0f}s")

    def stop(self) -> None:
        """SIGTERM, wait with a deadline, then SIGKILL; idempotent."""
        if self.popen is not None and self.popen.stdin is not None:
            self.popen.stdin.close()
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self._log_path.name:
            self._log_path.unlink(missing_ok=True)
