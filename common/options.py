"""The command-line options every PowMon process shares, defined once."""

from __future__ import annotations

from pathlib import Path

import click

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="settings.yaml (default: $POWMON_SETTINGS or ./settings.yaml)",
)

log_level_option = click.option(
    "--log-level",
    type=click.IntRange(0, 3),
    default=None,
    help="override LOG_LEVEL (0 quiet, 1 status, 2 readings, 3 both)",
)
