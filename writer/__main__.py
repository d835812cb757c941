"""`powmon-writer`: run the CSV writer, the only process that writes data files."""

from __future__ import annotations

from pathlib import Path

import click

from powmon.common.options import CONTEXT_SETTINGS, config_option, log_level_option
from powmon.common.runtime import run_process
from powmon.writer.writer import WriterConfig, run


@click.command(context_settings=CONTEXT_SETTINGS)
@config_option
@log_level_option
def main(config_path: Path | None, log_level: int | None) -> None:
    """Store readings from the bus (BROKER_BACKEND) as CSV files in LOCAL_DATA_ROOT.

    Needs a settings.yaml and the broker running. A relative LOCAL_DATA_ROOT is taken from
    the settings file's folder, not the working directory. One writer per data root (a
    second one exits 2). `powmon run` starts it itself.

    Stop with Ctrl-C or SIGTERM. Exit codes: 0 stopped, 1 crashed, 2 bad settings,
    or its data root taken by another writer.
    """
    run_process("powmon-writer", config_path, WriterConfig.from_settings, run, log_level)


if __name__ == "__main__":
    main()
