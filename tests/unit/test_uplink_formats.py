"""Uplink body formats: seed (the original's line), csv, json and InfluxDB line protocol.

The line-protocol checks use the small strict parser below, written from InfluxDB's grammar
(influxdata/line-protocol, line-protocol.ebnf and its decoder): a backslash escapes only the
characters special to the section it is in, any other backslash is literal, control characters
are refused, and field values must be typed exactly (float, `Ni` integer, quoted string).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powmon.base.storage import CSV_FIELDS
from powmon.base.text import reading_dict
from powmon.common.schema.readings import Flag, Reading
from powmon.uplink import formats
from powmon.uplink.spool import Spooled
from tests.rows import csv_row

AWKWARD_IDS = [
    "VIC",
    "with space",
    "a,b",
    "k=v",
    "a\\,b",  # a backslash before a special character
    "back\\slash",
    "\\lead",
    'q"uote',
    "ünïcødé-€-😀",
    " ,= all three",
]
TS = 1_700_000_000_123_456_789


def reading(sensor: str = "VIC", seq: int = 0, **kw: object) -> Reading:
    values: dict[str, object] = {
        "session": "sess-1", "ts_ns": TS + seq, "raw": 512.0, "volts": 0.0244140625,
        "amps": 0.36991, "watts": 1.8495, "flags": 0,
    }
    values.update(kw)
    return Reading(sensor, seq=seq, **values)  # type: ignore[arg-type]


def rows(*readings: Reading) -> list[Spooled]:
    return [Spooled(i + 1, r, 0) for i, r in enumerate(readings)]


# --- a strict line-protocol parser ----------------------------------------------------------

_FLOAT = re.compile(r"-?(\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)")
_INT = re.compile(r"-?\d+i")


class LPError(ValueError):
    pass


def _take(line: str, pos: int, stop: str, escapes: str) -> tuple[str, int]:
    out: list[str] = []
    while pos < len(line):
        c = line[pos]
        if c == "\\" and pos + 1 < len(line) and line[pos + 1] in escapes:
            out.append(line[pos + 1])
            pos += 2
            continue
        if c in stop:
            break
        if ord(c) < 32 or ord(c) == 127:
            raise LPError(f"control character at {pos}")
        out.append(c)
        pos += 1
    if not out:
        raise LPError(f"empty token at {pos}")
    return "".join(out), pos


def _expect(line: str, pos: int, char: str) -> int:
    if pos >= len(line) or line[pos] != char:
        raise LPError(f"expected {char!r} at {pos} in {line!r}")
    return pos + 1


def _string(line: str, pos: int) -> tuple[str, int]:
    pos = _expect(line, pos, '"')
    out: list[str] = []
    while pos < len(line) and line[pos] != '"':
        if line[pos] == "\\":
            if pos + 1 >= len(line) or line[pos + 1] not in '"\\':
                raise LPError(f"unescaped backslash in string at {pos}")
            pos += 1
        out.append(line[pos])
        pos += 1
    return "".join(out), _expect(line, pos, '"')


def _value(line: str, pos: int) -> tuple[object, int]:
    if pos < len(line) and line[pos] == '"':
        return _string(line, pos)
    end = pos
    while end < len(line) and line[end] not in ", ":
        end += 1
    token = line[pos:end]
    if _INT.fullmatch(token):
        return int(token[:-1]), end
    if _FLOAT.fullmatch(token):
        return float(token), end
    raise LPError(f"bad field value {token!r}")


def parse_lp(line: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """(measurement, tags, fields, timestamp) of one line, or LPError."""
    if line.startswith("#"):
        raise LPError("comment")
    measurement, pos = _take(line, 0, ", ", ", ")
    tags: dict[str, str] = {}
    while pos < len(line) and line[pos] == ",":
        key, pos = _take(line, pos + 1, ",= ", ",= ")
        pos = _expect(line, pos, "=")
        tags[key], pos = _take(line, pos, ",= ", ",= ")
    pos = _expect(line, pos, " ")
    fields: dict[str, object] = {}
    while True:
        key, pos = _take(line, pos, ",= ", ",= ")
        pos = _expect(line, pos, "=")
        fields[key], pos = _value(line, pos)
        if pos < len(line) and line[pos] == ",":
            pos += 1
            continue
        break
    pos = _expect(line, pos, " ")
    if not re.fullmatch(r"-?\d+", line[pos:]):
        raise LPError(f"bad timestamp {line[pos:]!r}")
    return measurement, tags, fields, int(line[pos:])


def test_strict_parser_refuses_what_influxdb_refuses() -> None:
    """The parser is strict enough to catch escaping mistakes (so round trips mean something)."""
    for bad in ("m,t=a b f=1 1", "m f=1,g=abc 1", 'm f="a\\" 1', "m,t= f=1 1", "m f=1i2 1"):
        with pytest.raises(LPError):
            parse_lp(bad)
    assert parse_lp('m\\ x,t\\=k=v\\,w f\\ 1="s\\"q",n=-3i,x=1e-05 -5') == (
        "m x", {"t=k": "v,w"}, {"f 1": 's"q', "n": -3, "x": 1e-05}, -5,
    )


# --- influx ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sensor", AWKWARD_IDS)
def test_influx_round_trips_awkward_sensor_ids(sensor: str) -> None:
    """Tags, typed fields and the ns timestamp come back exactly through a strict parser."""
    r = reading(sensor, seq=7, session=f"{sensor}/session", flags=Flag.OVER_RANGE | Flag.AC_RMS)
    encoded = formats.encode("influx", rows(r), measurement="power meter,A")
    assert encoded.rejected == []
    (request,) = encoded.requests
    assert request.content_type == formats.INFLUX_TYPE
    (line,) = request.body.decode().splitlines()
    measurement, tags, fields, ts = parse_lp(line)
    assert measurement == "power meter,A"
    assert tags == {"sensor_id": sensor, "session": f"{sensor}/session"}
    assert fields == {
        "raw": 512.0, "volts": 0.0244140625, "amps": 0.36991, "watts": 1.8495, "seq": 7,
        "flags": "over_range|ac_rms",
    }
    assert ts == TS + 7


def test_influx_string_field_escapes_quotes_and_backslashes() -> None:
    """String field values escape exactly '"' and '\\'."""
    text = 'a "quoted" \\path\\ end\\'
    assert formats.lp_string(text) == '"a \\"quoted\\" \\\\path\\\\ end\\\\"'
    assert parse_lp(f"m f={formats.lp_string(text)} 1")[2] == {"f": text}


def test_influx_batch_has_one_line_per_reading_with_its_key() -> None:
    """Every line carries sensor_id, session (tags) and seq (integer field)."""
    batch = rows(*(reading("VIC", seq=i) for i in range(3)), reading("ATT", seq=0))
    (request,) = formats.encode("influx", batch).requests
    keys = []
    for line in request.body.decode().splitlines():
        _, tags, fields, _ = parse_lp(line)
        keys.append((tags["sensor_id"], tags["session"], fields["seq"]))
    assert keys == [r.reading.key for r in batch]
    assert request.ids == (1, 2, 3, 4)


@pytest.mark.parametrize(
    ("sensor", "why"),
    [("new\nline", "control character"), ("tab\there", "control character"),
     ("trailing\\", "ends with a backslash")],
)
def test_influx_rejects_ids_line_protocol_cannot_carry(sensor: str, why: str) -> None:
    """Newlines/control characters and a trailing backslash go to dead letter, not the wire."""
    batch = rows(reading("OK", seq=0), reading(sensor, seq=1))
    encoded = formats.encode("influx", batch)
    assert [row_id for row_id, _ in encoded.rejected] == [2]
    assert why in encoded.rejected[0][1]
    (request,) = encoded.requests
    assert request.ids == (1,)
    assert len(request.body.decode().splitlines()) == 1


def test_non_finite_values_are_rejected_by_json_and_influx() -> None:
    """NaN/inf have no JSON or line-protocol form: those readings are dead-lettered."""
    batch = rows(reading(seq=0), reading(seq=1, watts=math.nan), reading(seq=2, amps=math.inf))
    for fmt in ("json", "influx"):
        encoded = formats.encode(fmt, batch)
        assert [row_id for row_id, _ in encoded.rejected] == [2, 3]
        assert encoded.requests[0].ids == (1,)


# --- seed -----------------------------------------------------------------------------------


def test_seed_line_matches_the_original_column_order_and_formatting() -> None:
    """unix_ts,sensor_id,raw,volts(.2f),amps(.4f),watts(str) + newline, as app.py built it."""
    vpp, offset, sns, vcc = 5.0 / 1024, 2.5, 0.066, 5.0
    voltage = 600 * vpp - offset  # the original's arithmetic
    amps, watts = voltage / sns, (voltage / sns) * vcc
    r = reading(
        seq=3, raw=600.0, volts=voltage, amps=amps, watts=watts, ts_ns=1_700_000_000_25 * 10**7
    )
    expected = f"170000000025,VIC,600,{voltage:.2f},{amps:.4f},{watts}\n"
    assert formats.seed_line(r) == expected
    assert expected.count(",") == 5


def test_seed_timestamp_is_the_originals_digits() -> None:
    """str(time.time()).replace('.', ''): seconds then the float's fraction digits."""
    assert formats.seed_timestamp(1_700_000_000_250_000_000) == "170000000025"
    assert formats.seed_timestamp(1_700_000_000_000_000_000) == "17000000000"
    ts = formats.seed_timestamp(TS)
    assert ts.isdigit()
    assert abs(float(ts[:10] + "." + ts[10:]) - TS / 1e9) < 1e-6


def test_seed_keeps_over_range_values_and_sends_one_reading_per_post() -> None:
    """The original zeroed over-range rows; PowMon sends the real values. No Content-Type."""
    big = reading(seq=0, raw=1023.0, volts=2.495, amps=37.8, watts=189.0, flags=Flag.OVER_RANGE)
    encoded = formats.encode("seed", rows(big, reading(seq=1)))
    assert [req.ids for req in encoded.requests] == [(1,), (2,)]
    assert all(req.content_type is None for req in encoded.requests)
    fields = encoded.requests[0].body.decode().rstrip("\n").split(",")
    assert fields[1:] == ["VIC", "1023", "2.50", "37.8000", "189.0"]


# --- csv and json ---------------------------------------------------------------------------


def test_csv_batch_round_trips_with_a_header_row() -> None:
    """csv: header = schema.CSV_FIELDS, one row per reading, awkward ids quoted correctly."""
    batch = rows(*(reading(sensor, seq=i) for i, sensor in enumerate(AWKWARD_IDS)))
    (request,) = formats.encode("csv", batch).requests
    assert request.content_type is not None and request.content_type.startswith("text/csv")
    parsed = list(csv.reader(io.StringIO(request.body.decode(), newline="")))
    assert tuple(parsed[0]) == CSV_FIELDS
    assert parsed[1:] == [[str(v) for v in csv_row(row.reading)] for row in batch]
    assert [(p[1], p[2], int(p[3])) for p in parsed[1:]] == [row.reading.key for row in batch]


def test_json_batch_round_trips() -> None:
    """json: an array of schema.reading_dict objects, UTF-8, keys intact."""
    batch = rows(*(reading(sensor, seq=i) for i, sensor in enumerate(AWKWARD_IDS)))
    (request,) = formats.encode("json", batch).requests
    assert request.content_type == "application/json"
    assert json.loads(request.body.decode("utf-8")) == [reading_dict(r.reading) for r in batch]


_finite = st.floats(allow_nan=False, allow_infinity=False)
_readings = st.builds(
    Reading, sensor_id=st.text(min_size=1, max_size=12), session=st.text(max_size=12),
    seq=st.integers(0, 2**40), ts_ns=st.integers(0, 4_000_000_000 * 10**9),
    raw=_finite, volts=_finite, amps=_finite, watts=_finite, flags=st.integers(0, 255),
)


@given(st.lists(_readings, max_size=8))
def test_the_json_body_is_what_json_dumps_makes_of_the_reading_dicts(
    readings: list[Reading],
) -> None:
    """formats.json_objects writes the body in one pass, without a dict per reading: byte
    for byte what json.dumps writes for reading_dict, whatever the ids hold."""
    expected = json.dumps([reading_dict(r) for r in readings], ensure_ascii=False,
                          allow_nan=False, separators=(",", ":"))
    assert formats.json_objects(readings) == expected


@given(_readings)
def test_a_seed_line_is_what_csv_writer_makes_of_its_six_fields(r: Reading) -> None:
    """seed_line formats with one f-string and csv.writer's own field for the id."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(
        (formats.seed_timestamp(r.ts_ns), r.sensor_id, formats._seed_raw(r.raw),
         f"{r.volts:.2f}", f"{r.amps:.4f}", str(float(r.watts))))
    assert formats.seed_line(r) == out.getvalue()
