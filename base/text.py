"""The text forms of a reading: its timestamp, its flag names, its JSON object.

Every file and text output PowMon writes (the CSV data files, gaps.csv, the uplink's csv, json
and MQTT bodies, the tap, the web page) says a time and a reading's flags the same way, so the
one format lives here, once, above the wire format of `common.schema` that it reads.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Final

from powmon.common.schema.readings import Flag, Reading


def _flag_text(flags: int) -> str:
    return "|".join(f.name.lower() for f in Flag if f.name is not None and flags & f)


FLAG_TEXT: Final = tuple(_flag_text(n) for n in range(1 << len(Flag)))


def flag_names(flags: int) -> str:
    """'over_range|ac_rms' style text for CSV and JSON; empty for a plain reading."""
    if 0 <= flags < len(FLAG_TEXT):
        return FLAG_TEXT[flags]  # every combination of known flags, worked out once
    return _flag_text(flags)


_FLAG_BITS: Final = {f.name.lower(): int(f) for f in Flag if f.name is not None}


def parse_flags(text: str) -> int:
    """flag_names read back: the flag bits of 'over_range|ac_rms' (0 for ''); ValueError for
    a name PowMon does not know."""
    bits = 0
    for name in text.split("|") if text else ():
        bit = _FLAG_BITS.get(name)
        if bit is None:
            raise ValueError(f"flag {name!r} is not one of {', '.join(_FLAG_BITS)}")
        bits |= bit
    return bits


# (seconds, their text), replaced whole: threads that format at once (the uplink's outputs)
# each see a pair that belongs together, never one's seconds with another's text.
_ts_cache: list[tuple[int, str]] = [(-1, "")]


def seconds_text(secs: int) -> str:
    """`2026-11-25T17:42:16` for a second since the epoch, cached: consecutive readings share
    it, and strftime is the costly part of a timestamp (the CSV formatter's hot path)."""
    cached = _ts_cache[0]
    if secs != cached[0]:
        cached = _ts_cache[0] = (secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)))
    return cached[1]


def format_ts(ts_ns: int) -> str:
    """UTC ISO 8601 with microseconds and 'Z', the one timestamp format PowMon writes."""
    return f"{seconds_text(ts_ns // 1_000_000_000)}.{ts_ns // 1000 % 1_000_000:06d}Z"


_TS_TEXT: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_parse_cache: list[object] = ["", 0]


def parse_ts(text: str) -> int:
    """format_ts read back: ns since the epoch of a CSV timestamp
    (`2026-11-25T17:42:16.123456Z`); ValueError for anything else.

    The seconds part is checked and converted once per second of data (consecutive rows
    share it; strptime is the costly bit); per row only the microseconds are.
    """
    head = text[:19]
    if head != _parse_cache[0]:
        if len(text) != 27 or _TS_TEXT.fullmatch(text) is None:
            raise ValueError(f"timestamp {text!r} is not like 2026-11-25T17:42:16.123456Z")
        _parse_cache[1] = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        _parse_cache[0] = head
    micros = text[20:26]
    if len(text) != 27 or text[19] != "." or text[26] != "Z" or not micros.isdigit():
        raise ValueError(f"timestamp {text!r} is not like 2026-11-25T17:42:16.123456Z")
    secs = _parse_cache[1]
    assert isinstance(secs, int)  # noqa: S101
    return secs * 1_000_000_000 + int(micros) * 1000


def reading_dict(r: Reading) -> dict[str, object]:
    """JSON-ready form (tap, the uplink's json and MQTT bodies, the page's events): the CSV
    columns plus the exact ns timestamp."""
    return {
        "timestamp": format_ts(r.ts_ns), "ts_ns": r.ts_ns, "sensor_id": r.sensor_id,
        "session": r.session, "seq": r.seq, "raw": r.raw, "volts": r.volts, "amps": r.amps,
        "watts": r.watts, "flags": flag_names(r.flags),
    }
