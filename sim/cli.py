"""`powmon sim`: simulated Arduinos on pseudo-terminals, for demos and end-to-end tests.

The paths go to stdout first (one `ID PATH` line per sensor), so a script or a test can read
them and start readers; faults are then injected on demand through stdin lines. The signal
handlers only set an Event; the main loop sees it within a poll period and closes every pty.
"""

from __future__ import annotations

import logging
import queue
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from powmon.common.logs import configure_logging
from powmon.common.runtime import install_stop_handlers
from powmon.sim.device import Fault, SimDevice
from powmon.sim.params import parse_options

if TYPE_CHECKING:  # the pty module needs termios: imported at run time only on POSIX
    from powmon.sim.pty import PtySimulator

log = logging.getLogger(__name__)

POLL: Final = 0.2  # main loop wait; SIGTERM is seen within it
DEFAULT_SENSOR: Final = "SIM:amps=1"
_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FAULT_WORDS: Final = {f.value: f for f in Fault}
HELP_COMMANDS: Final = (
    "garbage|nonnumeric|partial|nonutf8|silence ID [N]  spoil the next N read answers; "
    "corrupt|dropbytes|dropframe ID [N]  spoil the next N stream frames; "
    "reset ID; unplug ID; replug ID"
)


def parse_sensor(text: str) -> tuple[str, SimDevice]:
    """`VIC` or `ATT:amps=4,ac=50,noise=0.02` -> (id, device); ValueError says what is wrong."""
    sensor_id, _, rest = text.partition(":")
    if not _ID.fullmatch(sensor_id):
        raise ValueError(f"{text!r}: expected ID[:key=value,...] with an ID like VIC")
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{text!r}: expected key=value, got {item!r}")
        options[key.strip()] = value
    spec, _ = parse_options(sensor_id, options)
    return sensor_id, SimDevice(spec, sensor_id)


def parse_command(words: list[str], sims: dict[str, PtySimulator]) -> tuple[PtySimulator, int]:
    """Check one stdin command; return its simulator and count, or raise ValueError."""
    verb, args = words[0], words[1:]
    if verb not in {*FAULT_WORDS, "unplug", "replug"}:
        raise ValueError(f"unknown command {verb!r}; commands: {HELP_COMMANDS}")
    takes_count = verb in FAULT_WORDS and verb != Fault.RESET.value
    if not args or len(args) > (2 if takes_count else 1):
        raise ValueError(f"expected '{verb} ID{' [N]' if takes_count else ''}'")
    sim = sims.get(args[0])
    if sim is None:
        raise ValueError(f"unknown sensor {args[0]!r}; sensors: {', '.join(sims)}")
    count = int(args[1]) if args[1:] and args[1].isdigit() else 0 if args[1:] else 1
    if count < 1:
        raise ValueError(f"expected a count >= 1, got {args[1]!r}")
    return sim, count


def handle_command(line: str, sims: dict[str, PtySimulator]) -> str:
    """Run one stdin command; return the line to acknowledge it with."""
    words = line.split()
    if not words:
        return ""
    try:
        sim, count = parse_command(words, sims)
    except ValueError as err:
        return f"error: {err}"
    verb, sensor_id = words[0], words[1]
    if verb == "unplug":
        sim.unplug()
    elif verb == "replug":
        sim.replug()
        return f"ok replug {sensor_id} {sim.path}"
    else:
        sim.device.inject(FAULT_WORDS[verb], count)
    return f"ok {' '.join(words)}"


def _read_stdin(lines: queue.Queue[str]) -> None:
    """Feed stdin lines to the main loop; at EOF just stop reading (CI has no stdin)."""
    for line in sys.stdin:
        lines.put(line)


def serve(sims: dict[str, PtySimulator], stop: threading.Event) -> None:
    """Answer stdin commands until `stop` is set."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_stdin, args=(lines,), name="stdin", daemon=True).start()
    while not stop.is_set():
        try:
            line = lines.get(timeout=POLL)
        except queue.Empty:
            continue
        try:
            reply = handle_command(line, sims)
        except OSError as err:  # a replug that cannot open a pty or write its link
            reply = f"error: {err}"
        if reply:
            click.echo(reply)


@click.command(
    "sim",
    epilog=f"Commands on stdin: {HELP_COMMANDS}. POSIX only (pseudo-terminals); "
    "on Windows use sim:// ports instead.",
)
@click.argument("sensors", nargs=-1, metavar="ID[:key=value,...]...")
@click.option("--baud", type=click.IntRange(min=1), help="Pace answers like a UART at this rate.")
@click.option(
    "--link-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Create a stable symlink DIR/ID to each pty (survives replug).",
)
@click.option("--log-level", type=click.IntRange(0, 3), default=1, show_default=True)
def sim_command(
    sensors: tuple[str, ...], baud: int | None, link_dir: Path | None, log_level: int
) -> None:
    """Simulated Arduinos on pseudo-terminals; prints 'ID PATH' per sensor, serves until stopped.

    Sensor keys: amps (DC, or RMS with ac), ac (mains Hz), noise (amps std dev), seed,
    boot (0/1 chatter on open), offset, sns, vref; the board: drift (clock ppm), micros0,
    adc_rate (stream conversions/s). Default: one DC sensor, SIM:amps=1.
    Example: powmon sim VIC:amps=2.5 ATT:amps=4,ac=50,noise=0.02 --link-dir /tmp/powmon
    """
    if sys.platform == "win32":
        raise click.ClickException("powmon sim needs pseudo-terminals (POSIX); use sim:// ports")
    from powmon.sim.pty import PtySimulator  # noqa: PLC0415 -- POSIX-only module, see above

    configure_logging(log_level, "sim")
    try:
        parsed = [parse_sensor(text) for text in sensors or (DEFAULT_SENSOR,)]
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="SENSORS") from None
    ids = [sensor_id for sensor_id, _ in parsed]
    if len(set(ids)) != len(ids):
        raise click.BadParameter(f"sensor ids repeat: {' '.join(ids)}", param_hint="SENSORS")
    if link_dir is not None:
        link_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    install_stop_handlers(stop)
    sims: dict[str, PtySimulator] = {}
    try:
        for sensor_id, device in parsed:
            link = link_dir / sensor_id if link_dir is not None else None
            sims[sensor_id] = PtySimulator(device, baud=baud, link=link).start()
        for sensor_id, sim in sims.items():
            click.echo(f"{sensor_id} {sim.path}")
        serve(sims, stop)
    except OSError as err:
        raise click.ClickException(f"cannot start the simulator: {err}") from None
    finally:
        for sim in sims.values():
            sim.close()
    log.info("simulator stopped")
