"""`powmon calibrate`: measure a sensor's zero offset with no load, and print the OFFSET line.

An ACS712's output at zero current is near VCC/2 but not exactly, and it differs from part to
part: OFFSET in settings.yaml is that voltage, and every reading's amps depend on it. With no
current through the sensor, the mean of N raw counts times VPP is the offset; their spread
is the noise floor. The readings come off the bus when the pipeline runs (the reader holds the
port), else from the port itself, opened and handshaken as the reader does
(readers.handshake.open_device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import click
import serial
import zmq

from powmon.common.errors import SchemaError, SettingsError
from powmon.common.options import CONTEXT_SETTINGS, config_option
from powmon.common.runtime import install_stop_handlers, load_or_exit
from powmon.common.schema import decode_message
from powmon.common.schema.readings import Flag, reading_topic
from powmon.common.schema.status import Status, status_topic
from powmon.common.settings import SensorSettings, Settings
from powmon.common.transport import sub_socket
from powmon.readers.handshake import NoAnswer, open_device
from powmon.readers.link import BadAnswer, BadPort, PortUnavailable, parse_answer
from powmon.readers.reader import ReaderConfig

LISTEN_MIN_S: Final = 1.0  # how long to listen for a running reader, at the least


class CalibrateError(click.ClickException):
    """A measurement that could not be made: one line, exit 1."""


class UsageProblem(click.ClickException):
    exit_code = 2


@dataclass(frozen=True, slots=True)
class Measured:
    raws: list[float]
    source: str
    ac_rms: bool = False


def from_bus(
    settings: Settings, sensor_id: str, count: int, stop: threading.Event
) -> Measured | None:
    """`count` readings of a running reader, or None when no reader of it is heard."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    topics = [reading_topic(sensor_id), status_topic("reader", sensor_id)]
    sock = sub_socket(ctx, settings.broker_backend, topics, settings.hwm, curve=settings.curve)
    listen = max(LISTEN_MIN_S, 2.5 * settings.heartbeat_interval)
    deadline = time.monotonic() + listen
    raws: list[float] = []
    flags = 0
    heard = False
    try:
        while len(raws) < count and not stop.is_set():
            if time.monotonic() > deadline:
                if not heard:
                    return None
                raise CalibrateError(
                    f"sensor {sensor_id!r}: its reader is running but published "
                    f"{len(raws)} of {count} readings in time (is its device connected? "
                    "see `powmon tap --status`)"
                )
            if not sock.poll(100):
                continue
            frames = sock.recv_multipart()
            try:  # its heartbeat says it runs, but brings no readings
                message = decode_message(frames)
            except SchemaError:
                continue
            readings = [] if isinstance(message, Status) else message.readings
            if not heard:  # a live reader: give it time for the readings asked for
                deadline = time.monotonic() + listen + count * _period(settings, sensor_id)
                heard = True
            for reading in readings[: count - len(raws)]:
                raws.append(reading.raw)
                flags |= reading.flags
    finally:
        sock.close(linger=0)
        ctx.term()
    return Measured(raws, "the running pipeline (bus)", bool(flags & Flag.AC_RMS))


def _period(settings: Settings, sensor_id: str) -> float:
    return 2 * settings.sensor(sensor_id).polling_delay + 0.05


def from_port(
    settings: Settings, sensor: SensorSettings, count: int, stop: threading.Event
) -> Measured:
    """`count` raw DC samples straight from the port (the reader's own code path)."""
    # The reader's own handshake, but plain DC samples whatever MODE says: the offset is
    # the DC level at zero current (opening the port resets the board to DC anyway).
    wanted = dataclasses.replace(
        ReaderConfig.from_settings(settings, sensor.sensor_id).wanted, mode="dc"
    )
    raws: list[float] = []
    link = None
    try:
        connected = open_device(sensor.port, sensor.baudrate, wanted, stop)
        if connected is None:
            raise CalibrateError("stopped")
        link = connected.link
        bad = 0
        while len(raws) < count and not stop.is_set():
            try:
                raws.append(parse_answer(link.ask(wanted.read_command)))
            except BadAnswer as err:
                bad += 1
                if bad > 10 + count // 10:
                    raise CalibrateError(
                        f"sensor {sensor.sensor_id!r}: too many bad answers ({bad}; last: {err})"
                    ) from None
                link.drain()
    except (PortUnavailable, BadPort) as err:
        raise CalibrateError(
            f"sensor {sensor.sensor_id!r}: no reader publishes it and its port "
            f"{sensor.port!r} cannot be opened: {err.reason}"
        ) from None
    except (NoAnswer, serial.SerialException, OSError) as err:
        raise CalibrateError(f"sensor {sensor.sensor_id!r}: {err}") from None
    finally:
        if link is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                link.close()
    return Measured(raws, f"the port {sensor.port}")


def summary(sensor: SensorSettings, measured: Measured, where: str) -> list[str]:
    """The lines printed: offset, spread, noise and the OFFSET line to paste."""
    volts = [raw * sensor.vpp for raw in measured.raws]
    mean = statistics.fmean(volts)
    spread = statistics.pstdev(volts)
    sid = sensor.sensor_id
    head = f"{sid}: {len(volts)} readings from {measured.source}, with no load on the sensor"
    if measured.ac_rms:
        return [
            head,
            f"zero-load RMS: {mean / sensor.sns:.4f} A (MODE ac readings are the RMS around "
            "their own mean: OFFSET does not enter their conversion)",
            f"noise:         {spread / sensor.sns:.4f} A (standard deviation)",
            "to measure OFFSET anyway, stop the pipeline and run this again (it then reads "
            "DC samples from the port)",
        ]
    return [
        head,
        f"zero offset: {mean:.5f} V (mean raw {statistics.fmean(measured.raws):.2f} counts "
        f"x VPP {sensor.vpp:g})",
        f"spread:      {spread:.5f} V (standard deviation; min {min(volts):.5f}, "
        f"max {max(volts):.5f})",
        f"noise:       {spread / sensor.sns:.4f} A (spread / SNS {sensor.sns:g}); "
        f"the current OFFSET {sensor.offset:g} reads {(mean - sensor.offset) / sensor.sns:.4f} A "
        "at no load",
        f"put this line into the {sid} entry of SENSORS in {where}:",
        f"    OFFSET: {mean:.5f}",
    ]


@click.command("calibrate", context_settings=CONTEXT_SETTINGS)
@config_option
@click.option("--sensor", "sensor_id", required=True, help="the SENSORS_ID to calibrate")
@click.option(
    "--readings",
    "count",
    type=click.IntRange(2, 1_000_000),
    default=100,
    show_default=True,
    help="how many readings to average",
)
def calibrate_command(config_path: Path | None, sensor_id: str, count: int) -> None:
    """Measure a sensor's zero offset (remove all load first) and print its OFFSET line.

    Works with the pipeline running (readings from the bus) or stopped (from the port).
    Example: powmon calibrate --sensor VIC --readings 200
    """
    settings = load_or_exit(config_path)
    try:
        sensor = settings.sensor(sensor_id)
    except SettingsError as err:
        raise UsageProblem(str(err)) from None
    stop = threading.Event()
    install_stop_handlers(stop)
    measured = from_bus(settings, sensor_id, count, stop) or from_port(
        settings, sensor, count, stop
    )
    if len(measured.raws) < 2:
        raise CalibrateError(f"sensor {sensor_id!r}: interrupted before enough readings")
    for line in summary(sensor, measured, settings.path.name):
        click.echo(line)
