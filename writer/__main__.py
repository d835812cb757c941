"""`powmon-writer`: run the CSV writer, the only process that writes data files."""

from __future__ import annotations

from pathlib import Path

import click

from powmon.common.lifecycle import run_process
from powmon.writer.writer import WriterConfig, run


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="settings.yaml (default: $POWMON_SETTINGS or ./settings.yaml)",
)
@click.option(
    "--log-level",
    type=click.IntRange(0, 3),
    default=None,
    help="override LOG_LEVEL (0 quiet .. 3 everything)",
)
def main(config_path: Path | None, log_level: int | None) -> None:
    """Store readings from the bus (BROKER_BACKEND) as CSV files in LOCAL_DATA_ROOT."""
    run_process("powmon-writer", config_path, WriterConfig.from_settings, run, log_level)


if __name__ == "__main__":
    main()
