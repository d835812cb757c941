"""`powmon-uplink`: forward readings from the bus to the remote server (store-and-forward)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from powmon.common.errors import UplinkError
from powmon.common.options import CONTEXT_SETTINGS, config_option, log_level_option
from powmon.common.runtime import EXIT_OK, load_or_exit, run_process
from powmon.uplink.config import UplinkConfig
from powmon.uplink.spool import Spool
from powmon.uplink.uplink import run


def _requeue(config_path: Path | None) -> None:
    up = load_or_exit(config_path).uplink
    try:
        spool = Spool(up.spool_path, up.spool_max)
        try:
            moved = spool.requeue_dead()
        finally:
            spool.close()
    except UplinkError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"requeued {moved} dead-lettered readings in {up.spool_path}")


@click.command(context_settings=CONTEXT_SETTINGS)
@config_option
@log_level_option
@click.option(
    "--requeue-dead-letters",
    is_flag=True,
    help="move dead-lettered readings back into the queue, then exit (run it once the "
    "server accepts them again)",
)
def main(config_path: Path | None, log_level: int | None, requeue_dead_letters: bool) -> None:
    """Send readings from the bus to UPLINK_URL (or the encrypted HOST), in batches, from a
    durable spool, with retries; and to MQTT_URL when it is set.

    Needs a settings.yaml with REMOTE_SAVE: true and UPLINK_URL or HOST (HOST also needs its
    key: HOST_KEY_ENV or HOST_KEY_FILE), or MQTT_URL; and the broker running. `powmon run`
    starts it itself when one of those outputs is configured.

    Stop with Ctrl-C or SIGTERM. Exit codes: 0 stopped, 1 crashed, 2 bad settings,
    or its spool taken by another uplink.
    """
    if requeue_dead_letters:
        _requeue(config_path)
        sys.exit(EXIT_OK)
    run_process("powmon-uplink", config_path, UplinkConfig.from_settings, run, log_level)


if __name__ == "__main__":
    main()
