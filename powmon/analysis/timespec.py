"""`--since` / `--until` values: ISO 8601 times or dates, or times relative to now (`-2h`).

Times without an offset are UTC, as every timestamp PowMon writes is. A date alone means its
midnight (UTC). `-90s`, `-15m`, `-2h`, `-7d` count back from now, `now` is now.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Final

import click

_RELATIVE: Final = re.compile(r"-(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
EXAMPLES: Final = "2026-11-25, 2026-11-25T17:00, 2026-11-25T17:00:00+01:00, -2h, now"


def parse_time(text: str, now_ns: int | None = None) -> int:
    """ns since the epoch for one of the forms above; ValueError naming the text otherwise."""
    now = time.time_ns() if now_ns is None else now_ns
    value = text.strip()
    if value == "now":
        return now
    match = _RELATIVE.fullmatch(value)
    if match is not None:
        return now - int(float(match[1]) * _UNIT_S[match[2]] * 1_000_000_000)
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(f"{text!r} is not a time (examples: {EXAMPLES})") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    delta = parsed - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """click callback: the option's text as ns, or a usage error naming the option."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


since_option = click.option(
    "--since", metavar="TIME", callback=_option, help=f"only data from this time on ({EXAMPLES})"
)
until_option = click.option(
    "--until", metavar="TIME", callback=_option, help="only data before this time"
)
