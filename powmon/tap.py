"""`powmon tap`: watch the live stream as one more subscriber, one JSON object a line (or,
on a terminal, a live table: powmon.taplive).

A tap is an ordinary SUB socket on the broker's backend. It cannot slow the pipeline down: if
the terminal (or a pipe into `jq`) reads too slowly, the broker drops messages for this
subscriber only (the seq column shows where), never for the writer or the uplink.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TextIO

import click
import zmq

from powmon.common.curve import Curve
from powmon.common.errors import SchemaError
from powmon.common.lifecycle import install_stop_handlers, load_or_exit
from powmon.common.logs import RateLimiter
from powmon.common.options import CONTEXT_SETTINGS, config_option
from powmon.common.schema import (
    READING_PREFIX,
    STATUS_PREFIX,
    decode_readings,
    decode_status,
    reading_dict,
    reading_topic,
)
from powmon.common.transport import sub_socket


def _topics(sensors: tuple[str, ...], with_status: bool) -> list[bytes]:
    topics = [reading_topic(s) for s in sensors] if sensors else [READING_PREFIX]
    if with_status:
        topics.append(STATUS_PREFIX)
    return topics


def _render(frames: list[bytes]) -> list[dict[str, object]]:
    """The JSON objects of one message: a status, or each reading (a batch has several)."""
    if frames[0].startswith(STATUS_PREFIX):
        status = decode_status(frames)
        return [{
            "status": status.process, "id": status.ident, "pid": status.pid,
            "ts_ns": status.ts_ns, "state": status.state, "counters": dict(status.counters),
        }]
    return [reading_dict(r) for r in decode_readings(frames)]


def tap(
    backend: str, topics: list[bytes], hwm: int, stop: threading.Event, out: TextIO, count: int,
    curve: Curve | None,
) -> int:
    """Print messages until stopped or `count` readings were shown; return how many were."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = sub_socket(ctx, backend, topics, hwm, curve=curve)
    shown = bad = 0
    limiter = RateLimiter(period=5.0)
    try:
        while not stop.is_set() and (count == 0 or shown < count):
            if not sock.poll(200):
                continue
            frames = sock.recv_multipart()
            try:
                records = _render(frames)
            except SchemaError as err:
                bad += 1
                if limiter.allow("bad")[0]:  # a stream of junk must not flood the terminal
                    print(f"powmon tap: skipped a bad message ({bad} so far): {err}",
                          file=sys.stderr)
                continue
            if count:
                records = records[: count - shown]
            out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            out.flush()
            shown += sum("sensor_id" in r for r in records)
    except BrokenPipeError:
        pass  # `powmon tap | head` closed the pipe: that is a normal way to stop
    finally:
        sock.close()
        ctx.term()
        if bad:
            print(f"powmon tap: skipped {bad} bad message(s) in all", file=sys.stderr)
    return shown


@click.command("tap", context_settings=CONTEXT_SETTINGS)
@config_option
@click.option("--sensor", "sensors", multiple=True, help="only this sensor id (repeatable)")
@click.option("--status", "with_status", is_flag=True, help="also print heartbeats (JSON lines)")
@click.option(
    "--count",
    type=click.IntRange(0),
    default=0,
    help="exit after this many readings (0: run until Ctrl-C)",
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
    JSON lines (one reading per line) when piped or with --json."""
    settings = load_or_exit(config_path)
    stop = threading.Event()
    install_stop_handlers(stop)
    if sys.stdout.isatty() and not (as_json or with_status):
        from powmon.taplive import run_live  # noqa: PLC0415 -- rich only for a terminal

        periods = {s.sensor_id: s.polling_delay for s in settings.sensors}
        run_live(
            settings.broker_backend, sensors, settings.hwm, periods, stop, count, settings.curve
        )
        return
    tap(
        settings.broker_backend,
        _topics(sensors, with_status),
        settings.hwm,
        stop,
        sys.stdout,
        count,
        settings.curve,
    )
