"""Readings on the wire: one reading (version 1) or a batch of one session's (version 2).

A reading travels as a msgpack array (not a map): it is the hot path, and an array is about
half the bytes and noticeably faster to pack and unpack than a map with repeated key names.
A batch holds consecutive readings of one session (what a reader held for one
PUBLISH_INTERVAL, at most MAX_BATCH), and can also name device samples that never became
readings (`dropped`). Readers send version 2 only, built from rows packed once (`pack_row`,
`batch_payload`), which the replay ring keeps and replay answers splice in again;
`decode_batch` / `decode_readings` read both versions; every subscriber uses them.

`(sensor_id, session, seq)` identifies a reading everywhere: on the bus, in CSV, upstream.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from math import isfinite
from typing import Any, Final, NamedTuple

import msgpack

from powmon.common.errors import SchemaError
from powmon.common.schema.envelope import BATCH_VERSION, I64, READING_PREFIX, SCHEMA_VERSION, SHOW

MAX_BATCH: Final = 4096  # readings in one batch message at most


class Flag(enum.IntFlag):
    """Per-reading conditions, stored as names in CSV and as an integer on the wire."""

    OVER_RANGE = 1  # |amps| above the sensor's MAX_AMPS: raw kept, never zeroed
    AC_RMS = 2  # raw is the RMS deviation over whole mains cycles, not one sample
    AVERAGED = 4  # raw is the mean of several ADC samples (firmware `avg K`)
    REPLAYED = 8  # delivered late from a reader's replay buffer, after a gap


class Reading(NamedTuple):
    """One measurement of one sensor; volts/amps/watts already converted by the reader.

    A NamedTuple rather than a dataclass: every subscriber builds one per reading, and a tuple
    is made in one C call straight from the decoded fields (and indexes like the CSV row).
    """

    sensor_id: str
    session: str
    seq: int
    ts_ns: int
    raw: float
    volts: float
    amps: float
    watts: float
    flags: int = 0

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.sensor_id, self.session, self.seq)


_NUMBER: Final = frozenset((int, float))
_UNPACK_ERRORS: Final = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                         msgpack.StackError)
_packer: Final = msgpack.Packer()
_packb: Final = _packer.pack  # one Packer reused (benchmarks/README.md: hot path)
_array_header: Final = _packer.pack_array_header
_heads: dict[tuple[str, str], bytes] = {}  # (sensor_id, session) -> a batch's packed start
_unpackb: Final = msgpack.unpackb  # defaults are raw=False, strict_map_key=True (msgpack >= 1)
_topics: dict[str, bytes] = {}  # sensor_id -> b"reading/<id>/"; bounded by _TOPICS_MAX
_TOPICS_MAX: Final = 4096
_new_tuple: Final = tuple.__new__


def reading_topic(sensor_id: str) -> bytes:
    return READING_PREFIX + sensor_id.encode() + b"/"


def encode_reading(r: Reading) -> list[bytes]:
    """The two frames of a reading; the topic bytes are cached per sensor (the hot path)."""
    topic = _topics.get(r.sensor_id) or _topic(r.sensor_id)
    return [topic, _packb([SCHEMA_VERSION, r.sensor_id, r.session, r.seq, r.ts_ns, r.raw,
                           r.volts, r.amps, r.watts, r.flags])]


def _topic(sensor_id: str) -> bytes:
    """The expected topic of a sensor id seen for the first time, after checking the id.

    Ids follow the settings rule (no '/', no control characters, at most 64 bytes); checking
    here, once per new id, keeps the per-reading path free of it.
    """
    try:
        encoded = sensor_id.encode()
    except UnicodeEncodeError as err:
        raise SchemaError(f"reading: sensor_id is not valid unicode: {err}") from err
    if "/" in sensor_id or len(encoded) > 64 or any(ord(c) < 32 for c in sensor_id):
        raise SchemaError(f"reading: sensor_id {SHOW.repr(sensor_id)} breaks the id rules")
    if len(_topics) >= _TOPICS_MAX:  # ids come off the bus: never let them grow the cache
        _topics.clear()
    topic = _topics[sensor_id] = READING_PREFIX + encoded + b"/"
    return topic


def decode_reading(frames: Sequence[bytes]) -> Reading:
    """Parse and validate a single reading (version 1); raise SchemaError for anything else,
    a batch included: subscribers use decode_batch / decode_readings, which read both."""
    body = _checked(frames)
    del body[0]  # the version, checked
    return _new_tuple(Reading, body)


Measured = tuple[int, float, float, float, float, int]  # ts_ns, raw, volts, amps, watts, flags


class ReadingBatch(NamedTuple):
    """The readings of one reading message, version 1 or 2.

    `readings` have seqs `seq`, `seq + 1`, ... of one (sensor_id, session). `dropped` counts
    samples the device took but the host never received (a hole in the device's own numbers:
    lost or damaged frames): they never became readings and took no seq; they lie just before
    `seq`. A batch may hold no reading and only name dropped samples.
    """

    sensor_id: str
    session: str
    seq: int
    dropped: int
    readings: list[Reading]


def encode_batch(
    sensor_id: str, session: str, seq: int, rows: Sequence[Measured], dropped: int = 0
) -> list[bytes]:
    """The two frames of a batch: `[2, sensor_id, session, seq, dropped, [row, ...]]`, each row
    `[ts_ns, raw, volts, amps, watts, flags]` of the readings seq, seq + 1, ..."""
    return batch_frames(sensor_id, session, seq, pack_rows(rows), dropped)


def pack_row(row: Measured) -> bytes:
    """A reading's measured fields, packed once: the message, the replay ring and replay
    answers all reuse these bytes (batch_payload splices them in)."""
    return _packb(row)


def pack_rows(rows: Iterable[Measured]) -> list[bytes]:
    pack = _packb
    return [pack(row) for row in rows]


def batch_payload(
    sensor_id: str, session: str, seq: int, packed: Sequence[bytes], dropped: int = 0
) -> bytes:
    """The payload of a batch whose rows are already packed (pack_row): msgpack of
    `[2, sensor_id, session, seq, dropped, [row, ...]]`, byte for byte, made by splicing the
    rows' bytes behind a header instead of packing them again."""
    head = _heads.get((sensor_id, session))
    if head is None:
        if len(_heads) >= _TOPICS_MAX:
            _heads.clear()
        head = _heads[(sensor_id, session)] = (
            b"\x96" + _packb(BATCH_VERSION) + _packb(sensor_id) + _packb(session)
        )
    return b"".join((head, _packb(seq), _packb(dropped), _array_header(len(packed)), *packed))


def batch_frames(
    sensor_id: str, session: str, seq: int, packed: Sequence[bytes], dropped: int = 0
) -> list[bytes]:
    """The two frames of a batch of rows already packed (batch_payload)."""
    topic = _topics.get(sensor_id) or _topic(sensor_id)
    return [topic, batch_payload(sensor_id, session, seq, packed, dropped)]


def decode_readings(frames: Sequence[bytes]) -> list[Reading]:
    """The readings of a reading message of either version; SchemaError for anything else."""
    return decode_batch(frames).readings


def decode_batch(frames: Sequence[bytes]) -> ReadingBatch:
    """Parse and validate a reading message of either version; SchemaError for anything else."""
    body = _payload(frames)
    if type(body) is list and len(body) == 10:  # the usual message: one reading
        _fields(frames[0], body)
        del body[0]  # the version, checked
        return _new_tuple(ReadingBatch, (body[0], body[1], body[2], 0, [_new_tuple(Reading, body)]))
    if type(body) is not list or len(body) != 6 or body[0] != BATCH_VERSION:
        raise SchemaError(
            f"reading payload: expected 10 fields (v1) or a v2 batch, got {SHOW.repr(body)}"
        )
    return _batch(frames[0], body)


def _batch(topic: bytes, body: list[Any]) -> ReadingBatch:
    """A version 2 payload's readings after every check; raises SchemaError."""
    _, sensor_id, session, seq, dropped, rows = body
    _ids(topic, sensor_id, session)
    if not (
        type(seq) is int
        and type(dropped) is int
        and type(rows) is list
        and 0 <= seq <= I64 - MAX_BATCH
        and 0 <= dropped <= I64
        and len(rows) <= MAX_BATCH
        and (rows or dropped)
    ):
        raise SchemaError(f"reading batch: bad seq, dropped or rows in {SHOW.repr(body)}")
    readings = []
    new, ok = _new_tuple, _row_ok
    for row in rows:
        if type(row) is not list or len(row) != 6 or not ok(*row):
            raise SchemaError(f"reading batch: bad row {SHOW.repr(row)}")
        readings.append(new(Reading, (sensor_id, session, seq, *row)))
        seq += 1
    return new(ReadingBatch, (sensor_id, session, body[3], dropped, readings))


def _row_ok(ts_ns: Any, raw: Any, volts: Any, amps: Any, watts: Any, flags: Any) -> bool:
    """The checks of a reading's measured fields (one place for both versions)."""
    return (
        type(ts_ns) is int
        and type(flags) is int
        and -I64 <= ts_ns <= I64
        and 0 <= flags <= I64
        and type(raw) in _NUMBER
        and type(volts) in _NUMBER
        and type(amps) in _NUMBER
        and type(watts) in _NUMBER
        and (type(raw) is int or isfinite(raw))
        and (type(volts) is int or isfinite(volts))
        and (type(amps) is int or isfinite(amps))
        and (type(watts) is int or isfinite(watts))
    )


def _payload(frames: Sequence[bytes]) -> Any:
    """The unpacked payload of a two-frame message; SchemaError for anything else."""
    if len(frames) != 2:
        raise SchemaError(f"expected 2 frames [topic, payload], got {len(frames)}")
    try:
        return _unpackb(frames[1])
    except _UNPACK_ERRORS as err:
        raise SchemaError(f"payload is not msgpack: {err}") from err


def _checked(frames: Sequence[bytes]) -> list[Any]:
    """A single reading's payload, its 10 fields after every check; raises SchemaError."""
    body = _payload(frames)
    if type(body) is not list or len(body) != 10:
        raise SchemaError(f"reading payload: expected a list of 10 fields, got {SHOW.repr(body)}")
    return _fields(frames[0], body)


def _fields(topic: bytes, body: list[Any]) -> list[Any]:
    """Check a single reading's 10 fields (and its topic); the body itself, or SchemaError.

    This runs once per reading in every subscriber, so the checks use exact `type(x) is`
    tests (which also rule out bool, a subclass of int) instead of isinstance chains, the
    finiteness test is inlined, and the expected topic of each sensor is cached.
    """
    version, sensor_id, session, seq, ts_ns, raw, volts, amps, watts, flags = body
    if type(version) is not int or version != SCHEMA_VERSION:
        raise SchemaError(
            f"reading: schema version {SHOW.repr(version)}, this build speaks {SCHEMA_VERSION}"
            f" (single) and {BATCH_VERSION} (batch)"
        )
    _ids(topic, sensor_id, session)
    measured_ok = _row_ok(ts_ns, raw, volts, amps, watts, flags)
    if not (type(seq) is int and 0 <= seq <= I64 and measured_ok):
        raise SchemaError(f"reading: bad field types or ranges in {SHOW.repr(body)}")
    return body


def _ids(topic: bytes, sensor_id: Any, session: Any) -> None:
    """sensor_id and session are non-empty strings, and the topic is the sensor's."""
    if type(sensor_id) is not str or type(session) is not str or not sensor_id or not session:
        raise SchemaError(
            f"reading: bad sensor_id/session {SHOW.repr(sensor_id)}/{SHOW.repr(session)}"
        )
    expected = _topics.get(sensor_id) or _topic(sensor_id)
    if topic != expected and bytes(topic) != expected:
        raise SchemaError(
            f"reading: topic {SHOW.repr(topic)} does not match sensor_id {sensor_id!r}"
        )
