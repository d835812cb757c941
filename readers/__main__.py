"""`powmon-reader` / `python -m powmon.readers`: one reader process for one serial port."""

from __future__ import annotations

from pathlib import Path

import click

from powmon.common.options import CONTEXT_SETTINGS, config_option, log_level_option
from powmon.common.runtime import run_process
from powmon.common.settings import Settings
from powmon.readers.reader import ReaderConfig, run


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--sensor-id",
    required=True,
    help="SENSORS_ID of the sensor in settings.yaml (its calibration and, by default, its PORT)",
)
@click.option(
    "--port",
    default=None,
    help="serial port or URL, overriding the sensor's PORT: COM4, /dev/ttyACM0, sim://VIC?amps=2",
)
@config_option
@log_level_option
def main(sensor_id: str, port: str | None, config_path: Path | None, log_level: int | None) -> None:
    """Read one Arduino's current sensor and publish each reading to the PowMon broker.

    Needs a settings.yaml whose SENSORS has an entry with this SENSORS_ID, and the broker
    running (powmon-broker). `powmon run` starts one reader per sensor itself; start one by
    hand only to run the pipeline piece by piece (supervisord, systemd: `powmon deploy`).

    Stop with Ctrl-C or SIGTERM. Exit codes: 0 stopped, 1 crashed, 2 bad settings,
    or a board that refutes them (STREAM: on without streaming).
    """

    def build(settings: Settings) -> ReaderConfig:
        return ReaderConfig.from_settings(settings, sensor_id, port)

    run_process(f"powmon-reader-{sensor_id}", config_path, build, run, log_level)


if __name__ == "__main__":
    main()
