"""Request bodies for the four uplink formats: seed, csv, json, influx.

`encode()` turns a batch of spooled rows into HTTP requests, each carrying the rows it covers
(what the core acks, dead-letters or sends again), plus the rows that cannot be expressed in
the format at all: those go to the dead-letter table with the reason, never silently dropped.

- seed: the original script's body, one reading per POST, `unix_ts,sensor_id,raw,volts,amps,
  watts\\n`. It carries no session or seq, so a seed server cannot deduplicate.
- csv: one batch per POST, header row schema.CSV_FIELDS, like the writer's files.
- json: one batch per POST, an array of schema.reading_dict() objects.
- influx: InfluxDB line protocol (1.x, 2.x and 3.x alike), one line per reading.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from powmon.base.storage import csv_field, csv_lines, header_line
from powmon.base.text import flag_names
from powmon.common.schema.readings import Reading
from powmon.uplink.contract import Encoded
from powmon.uplink.spool import Spooled

CSV_TYPE: Final = "text/csv; charset=utf-8; header=present"
JSON_TYPE: Final = "application/json"
INFLUX_TYPE: Final = "text/plain; charset=utf-8"

_Problem = Callable[[Reading], "str | None"]


@dataclass(frozen=True, slots=True)
class Request:
    """One POST body and the spool rows it delivers."""

    rows: tuple[Spooled, ...]
    body: bytes
    content_type: str | None

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(row.id for row in self.rows)


# --- seed ---------------------------------------------------------------------------------


def seed_timestamp(ts_ns: int) -> str:
    """The original's `str(time.time()).replace('.', '')`, computed from ts_ns.

    The seconds as Python prints the float (shortest repr, usually 6-7 fraction digits,
    trailing zeros dropped) with the point removed: 1700000000.25 -> '170000000025'. Integer
    true division rounds correctly, so this is the very float time.time() would have given.
    """
    return str(ts_ns / 1_000_000_000).replace(".", "")


def _seed_raw(raw: float) -> str:
    # The original sent the device's own text, an integer ADC count.
    return str(int(raw)) if float(raw).is_integer() else repr(float(raw))


_IDS_MAX: Final = 4096  # text fields remembered per cache (sensor ids, sessions)


def seed_line(r: Reading) -> str:
    """`unix_ts,sensor_id,raw,volts(.2f),amps(.4f),watts(str(float))` + '\\n'.

    Over-range readings keep their values (the original zeroed them). A sensor id needing CSV
    quoting (a comma, a quote) is quoted; ordinary ids come out byte for byte as the original.
    Exactly what csv.writer makes of these six fields (tests/unit/test_uplink_formats.py checks
    it), in one f-string: the numbers never need quoting, and the id's field is csv.writer's
    own, remembered.
    """
    sid = csv_field(r.sensor_id)
    return (f"{seed_timestamp(r.ts_ns)},{sid},{_seed_raw(r.raw)},{r.volts:.2f},"
            f"{r.amps:.4f},{float(r.watts)!s}\n")


def _seed(rows: Sequence[Spooled]) -> Encoded[Request]:
    # No Content-Type: the original posted a str with requests, which sets none.
    return Encoded([Request((row,), seed_line(row.reading).encode(), None) for row in rows])


# --- csv and json -------------------------------------------------------------------------


def _csv(rows: Sequence[Spooled]) -> Encoded[Request]:
    if not rows:
        return Encoded([])
    # The writer's own rows (base.storage.csv_lines), with RFC 4180's line ends: a row ends in
    # its last "\n", and a newline inside a quoted field is left as it is, as csv.writer does.
    lines = [header_line(), *csv_lines([row.reading for row in rows])]
    body = "".join(f"{line[:-1]}\r\n" for line in lines)
    return Encoded([Request(tuple(rows), body.encode(), CSV_TYPE)])


def non_finite(r: Reading) -> str | None:
    """Why a reading cannot be encoded (NaN or infinity in a value), else None."""
    isfinite = math.isfinite
    if isfinite(r.raw) and isfinite(r.volts) and isfinite(r.amps) and isfinite(r.watts):
        return None  # every reading but a broken one: no loop over the names
    for name in ("raw", "volts", "amps", "watts"):
        if not math.isfinite(getattr(r, name)):
            return f"{name} is {getattr(r, name)!r}, which this format cannot carry"
    return None


_json_texts: dict[str, str] = {}  # sensor_id, session, flag text -> its JSON string
_json_flags: dict[int, str] = {}  # flags -> the JSON string of their names


def _json_text(text: str) -> str:
    if len(_json_texts) >= _IDS_MAX:
        _json_texts.clear()
    field = _json_texts[text] = json.dumps(text, ensure_ascii=False)
    return field


def _json_flag(flags: int) -> str:
    if len(_json_flags) >= _IDS_MAX:
        _json_flags.clear()
    field = _json_flags[flags] = json.dumps(flag_names(flags), ensure_ascii=False)
    return field


def json_objects(readings: Sequence[Reading]) -> str:
    """`json.dumps([reading_dict(r) for r in readings], ensure_ascii=False, allow_nan=False,
    separators=(",", ":"))`, byte for byte (tests/unit/test_uplink_formats.py), without a dict
    per reading; the readings must be finite (non_finite). A number is its repr, which is
    what json writes for an int or a float (the spool gives nothing else). Timestamps are
    formatted inline, the seconds part once per second of data (it repeats)."""
    texts, text = _json_texts, _json_text
    seconds: dict[int, str] = {}
    parts: list[str] = []
    for r in readings:
        ts_ns = r.ts_ns
        secs = ts_ns // 1_000_000_000
        head = seconds.get(secs)
        if head is None:
            head = seconds[secs] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        flags = _json_flags.get(r.flags) or _json_flag(r.flags)
        parts.append(
            f'{{"timestamp":"{head}.{ts_ns // 1000 % 1_000_000:06d}Z","ts_ns":{ts_ns:d},'
            f'"sensor_id":{texts.get(r.sensor_id) or text(r.sensor_id)},'
            f'"session":{texts.get(r.session) or text(r.session)},"seq":{r.seq:d},'
            f'"raw":{r.raw!r},"volts":{r.volts!r},"amps":{r.amps!r},'
            f'"watts":{r.watts!r},"flags":{flags}}}'
        )
    return "[" + ",".join(parts) + "]"


def _json(rows: Sequence[Spooled]) -> Encoded[Request]:
    good, rejected = _split(rows, non_finite)
    if not good:
        return Encoded([], rejected)
    body = json_objects([row.reading for row in good])
    return Encoded([Request(tuple(good), body.encode(), JSON_TYPE)], rejected)


# --- influx line protocol -----------------------------------------------------------------

_MEASUREMENT_ESC: Final = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESC: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESC: Final = str.maketrans({'"': '\\"', "\\": "\\\\"})


def lp_unrepresentable(text: str) -> str | None:
    """Why `text` cannot be a measurement, tag key/value or field key, or None if it can.

    Line protocol has no escape for a newline or other control character in these, and a
    trailing backslash would escape the separator after it (InfluxDB's own encoder refuses
    both). PowMon does not rewrite such a value (that would change the reading's key): the
    reading goes to the dead-letter table with this reason.
    """
    if not text:
        return "is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "contains a control character (newline, tab, ...)"
    if text.endswith("\\"):
        return "ends with a backslash"
    return None


def lp_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESC)


def lp_key(text: str) -> str:
    """Escape a tag key, tag value or field key."""
    return text.translate(_KEY_ESC)


def lp_string(text: str) -> str:
    return '"' + text.translate(_STRING_ESC) + '"'


def _lp_float(x: float) -> str:
    return repr(float(x))  # '0.5', '1e-05': both valid line-protocol floats


def influx_line(measurement: str, r: Reading) -> str:
    """`measurement,sensor_id=..,session=.. raw=..,volts=..,amps=..,watts=..,seq=Ni,flags=".."
    ts_ns`; tags in key order, as InfluxDB prefers. The measurement is pre-escaped."""
    return (
        f"{measurement},sensor_id={lp_key(r.sensor_id)},session={lp_key(r.session)} "
        f"raw={_lp_float(r.raw)},volts={_lp_float(r.volts)},amps={_lp_float(r.amps)},"
        f"watts={_lp_float(r.watts)},seq={r.seq}i,flags={lp_string(flag_names(r.flags))} "
        f"{r.ts_ns}"
    )


def _influx_problem(r: Reading) -> str | None:
    for name in ("sensor_id", "session"):
        why = lp_unrepresentable(getattr(r, name))
        if why is not None:
            return f"line protocol: tag {name} {getattr(r, name)!r} {why}"
    return non_finite(r)


def influx_requests(rows: Sequence[Spooled], measurement: str) -> Encoded[Request]:
    """One POST of line protocol for the batch (the InfluxDB output's body)."""
    good, rejected = _split(rows, _influx_problem)
    if not good:
        return Encoded([], rejected)
    escaped = lp_measurement(measurement)
    body = "".join(influx_line(escaped, row.reading) + "\n" for row in good)
    return Encoded([Request(tuple(good), body.encode(), INFLUX_TYPE)], rejected)


# --- dispatch -----------------------------------------------------------------------------


def _split(
    rows: Sequence[Spooled], problem: _Problem
) -> tuple[list[Spooled], list[tuple[int, str]]]:
    good: list[Spooled] = []
    rejected: list[tuple[int, str]] = []
    for row in rows:
        why = problem(row.reading)
        if why is None:
            good.append(row)
        else:
            rejected.append((row.id, why))
    return good, rejected


_Encoder = Callable[[Sequence[Spooled], str], Encoded[Request]]
_ENCODERS: Final[dict[str, _Encoder]] = {
    "seed": lambda rows, _measurement: _seed(rows),
    "csv": lambda rows, _measurement: _csv(rows),
    "json": lambda rows, _measurement: _json(rows),
    "influx": influx_requests,
}


def encode(fmt: str, rows: Sequence[Spooled], measurement: str = "power") -> Encoded[Request]:
    """The requests that deliver `rows` in format `fmt` (one of settings.UPLINK_FORMATS)."""
    encoder = _ENCODERS.get(fmt)
    if encoder is None:
        raise ValueError(f"unknown uplink format {fmt!r}")
    return encoder(rows, measurement)
