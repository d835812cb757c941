"""`powmon status`: one-shot health of a running pipeline, from its heartbeats.

It listens on the bus for a bounded time (a few heartbeat intervals, less once every expected
process was heard from twice), feeds what it hears to the health model (powmon.base.health) and
prints a table or one JSON object. The exit code makes it a health check for supervisord,
systemd, cron or a container: 0 when every required process is up and every sensor produced a
reading within STALL_TIMEOUT, 1 otherwise (nothing running counts as down), 2 for bad settings.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import click

from powmon.base.health import Expected, Health
from powmon.common.options import CONTEXT_SETTINGS, config_option
from powmon.common.runtime import load_or_exit
from powmon.common.settings import Settings
from powmon.probes import heartbeats

LISTEN_BEATS: Final = 3.0  # listen this many heartbeat intervals at most ...
LISTEN_MIN_S: Final = 1.5  # ... and at least this long, when something is missing
EXIT_DOWN: Final = 1


def _complete(health: Health) -> bool:
    """Every expected process heard from, readers twice (a rate needs two heartbeats)."""
    return all(
        health.beats(p, i) >= (2 if p == "reader" else 1)
        for p, i, _ in health.expected.processes
    )


def collect(settings: Settings, clock: Callable[[], float] = time.monotonic) -> Health:
    """Listen to heartbeats for a bounded time and return the model fed with them."""
    health = Health(Expected.from_settings(settings))
    seconds = max(LISTEN_BEATS * settings.heartbeat_interval, LISTEN_MIN_S)
    for status in heartbeats(settings, seconds, clock, done=lambda: _complete(health)):
        health.feed(status, clock())
    return health


def _age(seconds: float | None, suffix: str = " ago") -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s{suffix}"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m{suffix}"
    return f"{seconds / 3600:.1f}h{suffix}"


def _num(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(report: dict[str, Any]) -> str:
    """The human table of a health report (health.Health.to_json)."""
    head = "UP" if report["ok"] else "DOWN"
    lines = [f"pipeline {head}" + "".join(f"\n  - {p}" for p in report["problems"]), ""]
    procs = [["process", "state", "pid", "uptime", "heartbeat", "restarts"]]
    for name, p in report["processes"].items():
        uptime = _age(p["uptime_s"], "") if p["uptime_exact"] else "> " + _age(p["uptime_s"], "")
        procs.append([
            name, (p["state"] or "-") if p["up"] else f"DOWN ({p['why_down']})",
            _num(p["pid"]), uptime if p["pid"] is not None else "-", _age(p["beat_age_s"]),
            _num(p["restarts"]),
        ])
    sensors = [["sensor", "rate/s", "last reading", "bad lines", "reconnects", "gaps", "lost",
                "energy Wh"]]
    for sid, s in report["sensors"].items():
        sensors.append([
            sid, _num(s["rate"], "{:.1f}"), _age(s["age_s"]), _num(s["bad_lines"]),
            _num(s["reconnects"]), _num(s["gaps"]), _num(s["lost"]),
            _num(s["energy_wh"], "{:.3f}"),
        ])
    lines += [*_table(procs), "", *_table(sensors)]
    lines += [f"  {sid}: {s['problem']}" + ("; retrying" if s["waiting_for_port"] else "")
              for sid, s in report["sensors"].items() if s.get("problem")]
    lines.append("")
    if (w := report["writer"]) is not None:
        lines.append(f"writer: file {w['current_file'] or '-'} ({_num(w['bytes_in_file'])} bytes)"
                     f", rows {_num(w['rows'])} since writer start, gaps {_num(w['gaps'])}, "
                     f"lost {_num(w['lost'])}")
    if (d := report.get("storage")) is not None:
        lines.append(f"storage: oldest data {d['oldest_data'] or '-'}, deleted "
                     f"{_num(d['files_deleted'])} files ({_num(d['bytes_deleted'])} bytes) "
                     "since writer start")
    if (u := report["uplink"]) is not None:
        lines.append(f"uplink: spool {_num(u['spool_depth'])}, last success "
                     f"{_age(u['last_success_age_s'])}, last error {u['last_error'] or '-'}")
    return "\n".join(lines).rstrip() + "\n"


@click.command("status", context_settings=CONTEXT_SETTINGS)
@config_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table")
def status_command(config_path: Path | None, as_json: bool) -> None:
    """Health of the running pipeline; exit 0 if up and every sensor fresh, 1 if not."""
    settings = load_or_exit(config_path)
    report = collect(settings).to_json(time.monotonic())
    sys.stdout.write(json.dumps(report) + "\n" if as_json else render(report))
    raise SystemExit(0 if report["ok"] else EXIT_DOWN)
