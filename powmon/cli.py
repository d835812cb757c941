"""`powmon`: the umbrella command. Subcommands load lazily, so `powmon tap` starts fast."""

from __future__ import annotations

import copy
import importlib
from typing import Final

import click

from powmon import __version__

# name -> "module:attribute" of a click command
SUBCOMMANDS: Final = {
    "run": "powmon.supervisor.run:run_command",
    "sim": "powmon.sim.cli:sim_command",
    "tap": "powmon.tap.command:tap_command",
    "status": "powmon.status:status_command",
    "web": "powmon.web.__main__:web_command",
    "deploy": "powmon.deploy:deploy_command",
    "keygen": "powmon.keys:keygen_command",
    "encrypt-url": "powmon.keys:encrypt_url_command",
    "bench": "powmon.bench:bench_command",
    "report": "powmon.analysis.report:report_command",
    "plot": "powmon.analysis.plot:plot_command",
    "export": "powmon.analysis.export:export_command",
    "calibrate": "powmon.calibrate:calibrate_command",
    "check-config": "powmon.checkconfig:check_config_command",
}


# What `powmon --help` lists for each command: click would cut each docstring's first
# sentence at the width left beside the names, with "...", so each line is written to fit.
SHORT_HELP: Final = {
    "run": "Start the whole pipeline and keep it running",
    "sim": "Simulated Arduinos on pseudo-terminals",
    "tap": "Watch a running pipeline: live table or JSON lines",
    "status": "Health of the running pipeline (exit 0 up, 1 not)",
    "web": "Serve a live page, events and Prometheus metrics",
    "deploy": "Write supervisord or systemd configuration",
    "keygen": "Make a Fernet key for HOST, or a CURVE key pair",
    "encrypt-url": "Print the Fernet token for a URL, for HOST",
    "bench": "Measure PowMon against the physical limits",
    "report": "Energy and power per sensor and period",
    "plot": "Plot power and current over time",
    "export": "Readings as one time-ordered csv, jsonl or parquet",
    "calibrate": "Measure a sensor's zero offset (OFFSET)",
    "check-config": "Validate settings; test ports and bus endpoints",
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
        if cmd_name in SHORT_HELP:  # a copy: the module's object stays as it is
            command = copy.copy(command)
            command.short_help = SHORT_HELP[cmd_name]
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="powmon")
def main() -> None:
    """PowMon: power readings from Arduinos, onto a ZeroMQ bus, into CSV and upstream.

    Start with a settings.yaml (deploy/settings.example.yaml documents every key; the
    repository's settings.yaml reads two simulated sensors), check it with `powmon
    check-config`, then `powmon run`. `powmon COMMAND --help` tells more of each command.
    """
