"""`powmon tap`: watch the live stream as one more subscriber, one JSON object a line (or,
on a terminal, a live table: powmon.tap.table).

A tap is an ordinary SUB socket on the broker's backend. It cannot slow the pipeline down: if
the terminal (or a pipe into `jq`) reads too slowly, the broker drops messages for this
subscriber only (the seq column shows where), never for the writer or the uplink.

It shows readings, or with --status heartbeats only (--count counts what is shown). A tap that
hears nothing says so on stderr and what to do, and one refused by the broker's CURVE
admission says that instead of waiting silently (powmon.tap.listen).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import click
import zmq

from powmon.base.text import reading_dict
from powmon.common.errors import SchemaError
from powmon.common.logs import RateLimiter
from powmon.common.options import CONTEXT_SETTINGS, config_option
from powmon.common.runtime import EXIT_CRASH, install_stop_handlers, load_or_exit
from powmon.common.schema import decode_message
from powmon.common.schema.envelope import READING_PREFIX, STATUS_PREFIX
from powmon.common.schema.readings import reading_topic
from powmon.common.schema.status import Status
from powmon.tap.listen import Listening, TapRefused, quiet_after


def _topics(sensors: tuple[str, ...], with_status: bool) -> list[bytes]:
    """Heartbeats only with --status; else the readings, and the heartbeats too (not shown:
    they tell a quiet pipeline from none, tap.listen)."""
    if with_status:
        return [STATUS_PREFIX]
    return [*([reading_topic(s) for s in sensors] if sensors else [READING_PREFIX]), STATUS_PREFIX]


def _render(frames: list[bytes]) -> list[dict[str, object]]:
    """The JSON objects of one message: a status, or each reading (a batch has several)."""
    message = decode_message(frames)
    if isinstance(message, Status):
        status = message
        return [{
            "status": status.process, "id": status.ident, "pid": status.pid,
            "ts_ns": status.ts_ns, "state": status.state, "counters": dict(status.counters),
        }]
    return [reading_dict(r) for r in message.readings]


def _shown(with_status: bool, sensors: frozenset[str]) -> Callable[[dict[str, object]], bool]:
    """Which records a tap prints: heartbeats only with --status (of the --sensor readers
    only, when given, and every other process), else readings only."""
    if not with_status:
        return lambda r: "status" not in r
    return lambda r: "status" in r and (
        not sensors or r["status"] != "reader" or r["id"] in sensors
    )


def tap(
    listening: Listening,
    shows: Callable[[dict[str, object]], bool],
    stop: threading.Event,
    out: TextIO,
    count: int,
) -> int:
    """Print the messages `shows` keeps until stopped or `count` were shown; return how many
    were."""
    sock = listening.sock
    shown = bad = 0
    limiter = RateLimiter(period=5.0)
    try:
        while not stop.is_set() and (count == 0 or shown < count):
            if not sock.poll(200):
                listening.check()  # silence or a refused handshake: only when nothing came
                continue
            listening.heard()
            frames = sock.recv_multipart()
            try:
                records = [r for r in _render(frames) if shows(r)]
            except SchemaError as err:
                bad += 1
                if limiter.allow("bad")[0]:  # a stream of junk must not flood the terminal
                    print(f"powmon tap: skipped a bad message ({bad} so far): {err}",
                          file=sys.stderr)
                continue
            if count:
                records = records[: count - shown]
            if records:
                out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                out.flush()
            shown += len(records)
    except BrokenPipeError:
        pass  # `powmon tap | head` closed the pipe: that is a normal way to stop
    finally:
        if bad:
            print(f"powmon tap: skipped {bad} bad message(s) in all", file=sys.stderr)
    return shown


@click.command("tap", context_settings=CONTEXT_SETTINGS)
@config_option
@click.option("--sensor", "sensors", multiple=True, help="only this sensor id (repeatable)")
@click.option(
    "--status",
    "with_status",
    is_flag=True,
    help="heartbeats only: a row per process on a terminal, JSON lines otherwise",
)
@click.option(
    "--count",
    type=click.IntRange(0),
    default=0,
    help="exit after this many readings (heartbeats with --status; 0: run until Ctrl-C)",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines even on a terminal")
def tap_command(
    config_path: Path | None,
    sensors: tuple[str, ...],
    with_status: bool,
    count: int,
    as_json: bool,
) -> None:
    """Watch a running pipeline without disturbing it: a live table per sensor on a terminal,
    JSON lines (one reading per line) when piped or with --json; --status for heartbeats."""
    settings = load_or_exit(config_path)
    stop = threading.Event()
    install_stop_handlers(stop)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    listening = Listening(
        ctx, settings.broker_backend, _topics(sensors, with_status), settings.hwm,
        settings.curve, quiet_after(settings.heartbeat_interval),
    )
    try:
        if sys.stdout.isatty() and not as_json:
            from powmon.tap import table  # noqa: PLC0415 -- rich only for a terminal

            if with_status:
                table.run_status(listening, frozenset(sensors), stop, count)
            else:
                periods = {s.sensor_id: s.polling_delay for s in settings.sensors}
                table.run_live(listening, frozenset(sensors), periods, stop, count)
        else:
            tap(listening, _shown(with_status, frozenset(sensors)), stop, sys.stdout, count)
    except TapRefused as err:
        print(f"powmon tap: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_CRASH) from None
    finally:
        listening.close()
        ctx.term()
