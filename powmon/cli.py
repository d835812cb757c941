"""`powmon`: the umbrella command. Subcommands load lazily, so `powmon tap` starts fast."""

from __future__ import annotations

import importlib
from typing import Final

import click

from powmon import __version__

# name -> "module:attribute" of a click command
SUBCOMMANDS: Final = {
    "run": "powmon.supervise:run_command",
    "sim": "powmon.sim.cli:sim_command",
    "tap": "powmon.tap:tap_command",
    "status": "powmon.status:status_command",
    "web": "powmon.web.__main__:web_command",
    "deploy": "powmon.deploy:deploy_command",
    "keygen": "powmon.keys:keygen_command",
    "encrypt-url": "powmon.keys:encrypt_url_command",
    "bench": "powmon.bench:bench_command",
    "report": "powmon.report:report_command",
    "plot": "powmon.plot:plot_command",
    "calibrate": "powmon.calibrate:calibrate_command",
    "check-config": "powmon.checkconfig:check_config_command",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="powmon")
def main() -> None:
    """PowMon: power readings from Arduinos, onto a ZeroMQ bus, into CSV and upstream."""
