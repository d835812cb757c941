"""The bus decoders against arbitrary frames and arbitrary msgpack: SchemaError or a valid value.

Every receiver (writer, uplink, tap, supervisor, replay client) catches SchemaError and nothing
else, so any other exception out of a decoder is a message that kills a process.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack
from hypothesis import example, given
from hypothesis import strategies as st

from powmon.base.storage import csv_lines
from powmon.base.text import reading_dict
from powmon.common.errors import SchemaError
from powmon.common.schema.envelope import BATCH_VERSION, SCHEMA_VERSION
from powmon.common.schema.readings import (
    Reading,
    decode_batch,
    decode_reading,
    encode_batch,
    encode_reading,
    reading_topic,
)
from powmon.common.schema.replay import ReplayReply, decode_replay_reply, decode_replay_request
from powmon.common.schema.status import Status, decode_status, status_topic
from powmon.tap.command import _render
from tests.fuzz.strategies import INT64_MIN, any_text, fuzz, msgpack_values
from tests.rows import csv_row, csv_rows

INT64_MAX = 2**63 - 1
# [[[...[None]...]]]: 1 KB, within msgpack's nesting limit (1024) but deeper than repr() goes
# under Python's default recursion limit, which is what every PowMon process runs with.
DEEP = b"\x91" * 1020 + b"\xc0"
DEFAULT_RECURSION_LIMIT = 1000
# Known findings, each with a proposed fix to common/schema/ (docs/hostile.md, "Findings").
# strict: once the fix lands these pass, and the mark must go.


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@st.composite
def mutated_reading(draw: st.DrawFn) -> list[bytes]:
    """A valid reading with some fields replaced, dropped or added: reaches the deep checks."""
    sensor = draw(st.sampled_from(["VIC", "a/b", "x" * 100]) | any_text)
    body: list[Any] = [SCHEMA_VERSION, sensor, "s1", 7, 1_700_000_000 * 10**9, 512, 0.0, 0.0,
                       0.0, 0]
    for _ in range(draw(st.integers(1, 3))):
        body[draw(st.integers(0, 9))] = draw(msgpack_values)
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, 11))] + draw(st.lists(msgpack_values, max_size=2))
    topic = draw(st.sampled_from(["own", "other", "raw"]))
    if topic == "raw":
        head = draw(st.binary(max_size=20))
    else:
        name = sensor if topic == "own" and isinstance(sensor, str) else "OTHER"
        head = b"reading/" + name.encode("utf-8", "surrogatepass") + b"/"
    return [head, pack(body)]


any_frames = st.lists(st.binary(max_size=60), max_size=4)
packed_frames = st.tuples(st.binary(max_size=30), msgpack_values.map(pack)).map(list)
reading_frames = any_frames | packed_frames | mutated_reading()


def only_schema_errors(decode: Callable[[Any], Any], arg: Any) -> Any:
    """The decoded value, or None for a SchemaError; anything else fails the test."""
    try:
        return decode(arg)
    except SchemaError as err:
        assert str(err)  # receivers log it: it must say something
        return None


@fuzz(200)
@given(reading_frames)
@example([b"reading/VIC/", b"\xc1"])
@example([b"reading/VIC/", pack([99, "VIC", "s", 0, 0, 512, 0.0, 0.0, 0.0, 0])])
@example([b"reading/ATT/", pack([1, "VIC", "s", 0, 0, 512, 0.0, 0.0, 0.0, 0])])
@example([b"reading/VIC/"])
@example([b"reading/VIC/", b"", b""])
@example([b"reading/VIC/", b"\x9a\x01\xa1\xff" + b"\xc0" * 8])  # a str that is not UTF-8
@example([b"reading/VIC/", b"\xd6\xff\x00\x00\x00\x01"])  # a msgpack Timestamp
@example([b"reading/VIC/", b"\xc7\x0c\xff" + b"\xff" * 12])  # a Timestamp out of range
@example([b"reading/VIC/", b"\xdd\xff\xff\xff\xff"])  # claims 4 billion items
def test_decode_reading_raises_only_schema_error(frames: list[bytes]) -> None:
    """Any frames: a Reading that every receiver can store, or SchemaError."""
    reading = only_schema_errors(decode_reading, frames)
    if reading is None:
        return
    assert isinstance(reading, Reading)
    assert frames[0] == reading_topic(reading.sensor_id)
    csv_row(reading)  # the writer
    reading_dict(reading)  # tap and the uplink's json format
    assert decode_reading(encode_reading(reading)).key == reading.key


TS: Final = 1_700_000_000 * 10**9
ROW: Final[list[Any]] = [TS, 512, 0.0, 0.0, 0.0, 0]


@st.composite
def mutated_batch(draw: st.DrawFn) -> list[bytes]:
    """A valid batch with its header or some rows' fields replaced, dropped or added."""
    rows: list[Any] = [list(ROW) for _ in range(draw(st.integers(0, 4)))]
    body: list[Any] = [BATCH_VERSION, "VIC", "s1", draw(st.integers(0, 9)), 0, rows]
    for _ in range(draw(st.integers(0, 2))):
        body[draw(st.integers(0, 5))] = draw(msgpack_values)
    for row in rows:
        if draw(st.booleans()):
            row[draw(st.integers(0, 5))] = draw(msgpack_values)
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, 7))]
    return [b"reading/VIC/", pack(body)]


@fuzz(300)
@given(mutated_batch() | reading_frames)
@example([b"reading/VIC/", pack([BATCH_VERSION, "VIC", "s1", 0, 0, [ROW, ROW[:3]]])])
@example([b"reading/VIC/", pack([BATCH_VERSION, "VIC", "s1", 2**63, 0, [ROW]])])
def test_decode_batch_raises_only_schema_error(frames: list[bytes]) -> None:
    """Any frames: a batch whose readings every receiver can store (consecutive seqs of one
    session, int64 and finite fields) and that encodes back the same, or SchemaError."""
    batch = only_schema_errors(decode_batch, frames)
    if batch is None:
        return
    first = batch.seq
    assert [r.seq for r in batch.readings] == list(range(first, first + len(batch.readings)))
    assert {(r.sensor_id, r.session) for r in batch.readings} <= {(batch.sensor_id, batch.session)}
    assert all(_fits_every_store(r) for r in batch.readings)
    for r in batch.readings:
        csv_row(r)
        reading_dict(r)
    rows = [(r.ts_ns, r.raw, r.volts, r.amps, r.watts, r.flags) for r in batch.readings]
    again = encode_batch(batch.sensor_id, batch.session, batch.seq, rows, batch.dropped)
    assert decode_batch(again) == batch


@fuzz(100)
@given(mutated_batch())
def test_tap_prints_every_reading_of_a_batch(frames: list[bytes]) -> None:
    """`powmon tap` renders one JSON line per reading of what decode_batch accepts."""
    records = only_schema_errors(_render, frames)
    batch = only_schema_errors(decode_batch, frames)
    assert (records is None) == (batch is None)
    if records is not None and batch is not None:
        assert [r["seq"] for r in records] == [r.seq for r in batch.readings]
        json.dumps(records, ensure_ascii=False)


def test_a_deeply_nested_payload_is_a_schema_error() -> None:
    """1 KB of nested arrays (within msgpack's own limit) is refused, not a crash."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(DEFAULT_RECURSION_LIMIT)  # Hypothesis raises it for its own tests
    try:
        _decode_deep()
    finally:
        sys.setrecursionlimit(old)


def _decode_deep() -> None:
    for decode, frames in ((decode_reading, [b"reading/VIC/", DEEP]),
                           (decode_status, [b"status/x/y/", DEEP])):
        assert only_schema_errors(decode, frames) is None


def _fits_every_store(r: Reading) -> bool:
    """What the spool (SQLite INTEGER is int64) and strict JSON/line-protocol servers take."""
    return (
        0 <= r.seq <= INT64_MAX
        and INT64_MIN <= r.ts_ns <= INT64_MAX
        and 0 <= r.flags <= INT64_MAX
        and all(math.isfinite(x) for x in (r.raw, r.volts, r.amps, r.watts))
    )


@fuzz(300)
@given(mutated_reading())
@example([b"reading/VIC/", pack([1, "VIC", "s", 2**63, 0, 512, 0.0, 0.0, 0.0, 0])])
def test_accepted_readings_fit_the_spool_and_strict_json(frames: list[bytes]) -> None:
    """A reading the decoder accepts has int64 integers and finite numbers, or is refused."""
    reading = only_schema_errors(decode_reading, frames)
    assert reading is None or _fits_every_store(reading)


status_bodies = st.fixed_dictionaries(
    {"v": st.just(SCHEMA_VERSION) | msgpack_values, "process": st.just("reader") | msgpack_values,
     "id": st.just("VIC") | msgpack_values, "pid": st.integers(0, 99999) | msgpack_values,
     "ts": st.integers(0, 2**62) | msgpack_values, "state": msgpack_values,
     "counters": st.dictionaries(any_text, msgpack_values, max_size=4) | msgpack_values},
)


@st.composite
def status_frames(draw: st.DrawFn) -> list[bytes]:
    body = draw(status_bodies)
    if draw(st.booleans()):
        del body[draw(st.sampled_from(sorted(body)))]
    try:
        topic = status_topic(str(body.get("process")), str(body.get("id")))
    except UnicodeEncodeError:
        topic = b"status/"
    return [draw(st.just(topic) | st.binary(max_size=20)), pack(body)]


@fuzz(150)
@given(status_frames() | any_frames | packed_frames)
@example([b"status/reader/VIC/", pack({"v": 1, "process": "reader", "id": "VIC",
                                       "pid": float("inf"), "ts": 0, "state": "x",
                                       "counters": {}})])
def test_decode_status_raises_only_schema_error(frames: list[bytes]) -> None:
    """Any frames: a Status, or SchemaError."""
    status = only_schema_errors(decode_status, frames)
    assert status is None or isinstance(status, Status)


@fuzz(200)
@given(status_frames())
@example(
    [
        b"status/reader/VIC/",
        pack(
            {
                "v": 1,
                "process": "reader",
                "id": "VIC",
                "pid": 1,
                "ts": 0,
                "state": "x",
                "counters": {"a": b"\xff"},
            }
        ),
    ]
)
def test_tap_prints_every_message_the_decoder_accepts(frames: list[bytes]) -> None:
    """`powmon tap --status` renders what decode_status accepts as one JSON line."""
    record = only_schema_errors(_render, frames)
    if record is not None:
        json.dumps(record, ensure_ascii=False)


@fuzz(150)
@given(st.binary(max_size=60) | msgpack_values.map(pack)
       | st.tuples(msgpack_values, msgpack_values, msgpack_values).map(
           lambda t: pack([SCHEMA_VERSION, "replay", *t])))
def test_decode_replay_request_raises_only_schema_error(payload: bytes) -> None:
    """Any payload: a ReplayRequest with integer bounds, or SchemaError."""
    req = only_schema_errors(decode_replay_request, payload)
    if req is not None:
        assert type(req.first) is int
        assert type(req.last) is int


def _reply_payloads(draw: st.DrawFn, n: int) -> Sequence[Any]:
    good = encode_reading(Reading("VIC", "s1", 0, 0, 512, 0.0, 0.0, 0.0))[1]
    lossy = encode_batch("VIC", "s1", 1, [(TS, 512, 0.0, 0.0, 0.0, 0)], dropped=3)[1]
    return [draw(st.sampled_from([good, lossy]) | msgpack_values) for _ in range(n)]


@st.composite
def replay_replies(draw: st.DrawFn) -> bytes:
    available = draw(st.lists(st.integers(-5, 5) | msgpack_values, min_size=2, max_size=2)
                     | msgpack_values)
    payloads = _reply_payloads(draw, draw(st.integers(0, 3)))
    return pack([SCHEMA_VERSION, "replayed", draw(st.just("VIC") | msgpack_values), "s1",
                 available, payloads])


@fuzz(150)
@given(replay_replies() | st.binary(max_size=60) | msgpack_values.map(pack))
@example(pack([SCHEMA_VERSION, "replayed", "VIC", "s1", ["x", 1], []]))
def test_decode_replay_reply_raises_only_schema_error(payload: bytes) -> None:
    """Any payload: a ReplayReply with integer bounds, or SchemaError."""
    reply = only_schema_errors(decode_replay_reply, payload)
    if reply is not None:
        assert isinstance(reply, ReplayReply)
        assert all(type(x) is int for x in reply.available)


finite = st.floats(allow_nan=False, allow_infinity=False)
ids = any_text.filter(bool)
readings = st.builds(
    Reading, ids, ids, st.integers(0, INT64_MAX), st.integers(-INT64_MAX, INT64_MAX),
    st.integers(0, 1023) | finite, finite, finite, finite, st.integers(0, INT64_MAX),
)


@fuzz(200)
@given(st.lists(readings, max_size=5))
@example([Reading("a,b", 'q"t', 1, 0, 512.25, -0.0, 1e300, 0.0, 99)])
@example([Reading("c\rr", "x\ny", 0, -1, 7, 0.0, 0.0, 0.0, 0)])
def test_csv_lines_are_what_csv_writer_makes_of_csv_rows(batch: list[Reading]) -> None:
    """The writer's one-step formatter writes byte for byte the lines csv.writer writes."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(csv_rows(batch))
    assert "".join(csv_lines(batch)) == out.getvalue()
