"""`powmon-broker`: run the PowMon bus, the XSUB/XPUB proxy every other process connects to."""

from __future__ import annotations

from pathlib import Path

import click

from powmon.broker.broker import BrokerConfig, run
from powmon.common.options import CONTEXT_SETTINGS, config_option, log_level_option
from powmon.common.runtime import run_process


@click.command(context_settings=CONTEXT_SETTINGS)
@config_option
@log_level_option
def main(config_path: Path | None, log_level: int | None) -> None:
    """Run the PowMon bus: an XSUB/XPUB proxy on BROKER_FRONTEND / BROKER_BACKEND.

    Needs a settings.yaml; start it before the writer and the readers. `powmon run` starts
    it itself; run it alone only to run the pipeline piece by piece (`powmon deploy`).

    Stop with Ctrl-C or SIGTERM. Exit codes: 0 stopped, 1 crashed, 2 bad settings,
    or an endpoint already in use.
    """
    run_process("powmon-broker", config_path, BrokerConfig.from_settings, run, log_level)


if __name__ == "__main__":
    main()
