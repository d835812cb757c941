"""`powmon-broker`: run the PowMon bus, the XSUB/XPUB proxy every other process connects to."""

from __future__ import annotations

from pathlib import Path

import click

from powmon.broker.broker import BrokerConfig, run
from powmon.common.lifecycle import run_process
from powmon.common.options import CONTEXT_SETTINGS, config_option, log_level_option


@click.command(context_settings=CONTEXT_SETTINGS)
@config_option
@log_level_option
def main(config_path: Path | None, log_level: int | None) -> None:
    """Run the PowMon bus: an XSUB/XPUB proxy on BROKER_FRONTEND / BROKER_BACKEND."""
    run_process("powmon-broker", config_path, BrokerConfig.from_settings, run, log_level)


if __name__ == "__main__":
    main()
