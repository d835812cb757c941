"""`powmon web` / `python -m powmon.web`: serve the live page, events and metrics.

A plain process like the others: settings, logging and exit codes from common.runtime (2 for
bad settings, including a non-loopback address without WEB_TOKEN). uvicorn serves the app on a
socket bound here, so a port in use is one clear error line; uvicorn's own signal handling stops
it gracefully (event streams end, the bus tasks send a last `stopped` heartbeat).
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from powmon.common import checks
from powmon.common.errors import InUseError, PowmonError
from powmon.common.options import CONTEXT_SETTINGS, config_option, log_level_option
from powmon.common.runtime import EXIT_USAGE, run_process
from powmon.web.config import WebConfig

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

GRACEFUL_S: Final = 3
STOP_POLL_S: Final = 0.2
EXTRA: Final = ("uvicorn", "starlette", "sse_starlette", "prometheus_client")


def _check_extra() -> None:
    """Without the optional `web` extra, one line saying how to get it (not a traceback)."""
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        print(f"powmon: error: powmon web needs the web extra (missing {', '.join(missing)}): "
              "pip install 'powmon[web]'", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:  # exit 2: taken, as a bus endpoint or a lock is
            raise InUseError(f"web cannot listen on {host}:{port}: {err}") from err
        raise PowmonError(f"web cannot listen on {host}:{port}: {err}") from err


def serve(config: WebConfig, stop: threading.Event) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's handlers) or `stop`."""
    import uvicorn  # noqa: PLC0415 (the optional extra, checked by _check_extra)

    from powmon.web.app import build_app  # noqa: PLC0415 (likewise: starlette)

    sock = _bind(config.host, config.port)
    where = f"[{config.host}]" if ":" in config.host else config.host
    log.info("web up http://%s:%d/ token=%s", where, config.port,
             "required" if config.token else "off")
    server = uvicorn.Server(uvicorn.Config(
        build_app(config), log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_S,
    ))
    try:
        asyncio.run(_serve_until(server, sock, stop))
    finally:
        sock.close()
    log.info("web stopped")


async def _serve_until(server: uvicorn.Server, sock: socket.socket,
                       stop: threading.Event) -> None:
    """Serve; `stop` set by anyone else (the lifeline, when `powmon run` is gone) ends the
    server as a signal does, so the web page dies with its supervisor like every child."""

    async def watch() -> None:
        while not stop.is_set():
            await asyncio.sleep(STOP_POLL_S)
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()


def _listen(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    if value is None:
        return None
    try:
        return checks.listen(value)
    except checks.Bad as bad:
        raise click.BadParameter(f"expected {bad.expected}, got {value!r}") from None


@click.command("web", context_settings=CONTEXT_SETTINGS)
@config_option
@click.option("--listen", callback=_listen, metavar="HOST:PORT",
              help="address to serve on (default: WEB_LISTEN, else 127.0.0.1:8080)")
@log_level_option
def web_command(config_path: Path | None, listen: tuple[str, int] | None,
                log_level: int | None) -> None:
    """Serve a live page, an event stream and Prometheus metrics of the running pipeline.

    Needs the `web` extra (pip install 'powmon[web]'), a settings.yaml and the pipeline
    running. Listens on --listen, else WEB_LISTEN, else 127.0.0.1:8080; any address other
    than loopback needs WEB_TOKEN. `powmon run` starts it itself when WEB_LISTEN is set.

    Stop with Ctrl-C or SIGTERM. Exit codes: 0 stopped, 1 crashed, 2 bad settings,
    or a non-loopback address without WEB_TOKEN.
    """
    _check_extra()
    run_process("powmon-web", config_path, lambda s: WebConfig.from_settings(s, listen), serve,
                log_level)


main = web_command

if __name__ == "__main__":
    main()
