"""The wire format of the PowMon bus: the only module that knows how messages look in bytes.

A message is two ZeroMQ frames, `[topic, payload]`, the payload msgpack. Topics end with '/' so
that a prefix subscription to `reading/VIC/` never matches `reading/VIC2/`. A reading travels as
a msgpack array (not a map): it is the hot path, and an array is about half the bytes and
noticeably faster to pack and unpack than a map with repeated key names.

Readings come in two versions on the same topic: version 1 is one reading, version 2 a batch of
consecutive readings of one session (what a reader held for one PUBLISH_INTERVAL, at most
MAX_BATCH), which can also name device samples that never became readings (`dropped`).
Readers send version 2 only, built from rows packed once (`pack_row`, `batch_payload`), which
the replay ring keeps and replay answers splice in again; `decode_batch` / `decode_readings`
read both versions; every subscriber uses them.

`(sensor_id, session, seq)` identifies a reading everywhere: on the bus, in CSV, upstream.
"""

from __future__ import annotations

import enum
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import isfinite
from typing import Any, Final, NamedTuple

import msgpack

from powmon.common.curve import is_z85_key
from powmon.common.errors import SchemaError

SCHEMA_VERSION: Final = 1  # single readings, statuses, replay messages
BATCH_VERSION: Final = 2  # a batch of readings (encode_batch)
MAX_BATCH: Final = 4096  # readings in one batch message at most
READING_PREFIX: Final = b"reading/"
STATUS_PREFIX: Final = b"status/"

# Status.state values. STOPPED is a process's last heartbeat: after it, nothing more comes
# from that process (a reader has closed its replay socket too).
STATE_RUNNING: Final = "running"
STATE_DISCONNECTED: Final = "disconnected"  # a reader without its device
STATE_STOPPED: Final = "stopped"

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


@dataclass(frozen=True, slots=True)
class ReaderProgress:
    """What other processes rely on in a reader's heartbeat: the typed part of its status.

    Sinks read `session`, `seq` (the next seq the reader will publish: everything below it was
    published), `replay` (where to ask for missing ranges; empty when REPLAY_BUFFER is 0) and
    `replay_key` (the replay socket's CURVE public key, Z85; empty without CURVE); supervisors
    and health checks read `readings` and `last_reading_ns`. On the wire these are keys of the
    heartbeat's counters map, so that taps and older tools see them as before.

    `problem` says in one line why the reader has no device right now ("port not found:
    ...", "cannot open port ...: ...", "cannot connect: ..."; empty when connected), for
    people; `waiting_for_port` is true while the port itself cannot be opened and the reader
    retries it by itself: a supervisor leaves such a reader alone instead of restarting it.
    """

    session: str
    seq: int = 0
    readings: int = 0
    replay: str = ""
    last_reading_ns: int = 0
    replay_key: str = ""
    problem: str = ""
    waiting_for_port: bool = False


_PROGRESS_KEYS: Final = ("session", "seq", "readings", "replay", "last_reading_ns", "replay_key")
MAX_GONE: Final = 256


@dataclass(frozen=True, slots=True)
class ReaderEnd:
    """A reader process that ended, and how far its session got (`seq`: the next one it would
    have published), as its supervisor last heard down the lifeline. A supervisor's heartbeat
    repeats these for a while, so that a sink that was behind (or down) when the reader died
    still learns that the session will never go on, and names what it misses of it."""

    sensor_id: str
    session: str
    seq: int


@dataclass(frozen=True, slots=True)
class Status:
    """A heartbeat or event of one process: who it is, its state, and its counters.

    `started_ns` (wall clock) is when the process started, for uptime; `reader` is set for a
    reader's heartbeat. `counters` holds everything else, for people and dashboards to read.
    """

    process: str
    ident: str
    pid: int
    ts_ns: int
    state: str
    counters: Mapping[str, Any] = field(default_factory=dict)
    started_ns: int = 0
    reader: ReaderProgress | None = None
    gone: tuple[ReaderEnd, ...] = ()


def reading_topic(sensor_id: str) -> bytes:
    return READING_PREFIX + sensor_id.encode() + b"/"


def status_topic(process: str, ident: str) -> bytes:
    return STATUS_PREFIX + process.encode() + b"/" + ident.encode() + b"/"


def encode_reading(r: Reading) -> list[bytes]:
    """The two frames of a reading; the topic bytes are cached per sensor (the hot path)."""
    topic = _topics.get(r.sensor_id) or _topic(r.sensor_id)
    return [topic, _packb([SCHEMA_VERSION, r.sensor_id, r.session, r.seq, r.ts_ns, r.raw,
                           r.volts, r.amps, r.watts, r.flags])]


def encode_status(s: Status) -> list[bytes]:
    counters = dict(s.counters)
    if s.reader is not None:
        r = s.reader
        counters.update(session=r.session, seq=r.seq, readings=r.readings, replay=r.replay,
                        last_reading_ns=r.last_reading_ns)
        if r.replay_key:
            counters["replay_key"] = r.replay_key
        counters.update(problem=r.problem, waiting_for_port=r.waiting_for_port)
    body = {"v": SCHEMA_VERSION, "process": s.process, "id": s.ident, "pid": s.pid,
            "ts": s.ts_ns, "state": s.state, "counters": counters}
    if s.started_ns:
        body["started"] = s.started_ns
    if s.gone:
        body["gone"] = [[g.sensor_id, g.session, g.seq] for g in s.gone]
    return [status_topic(s.process, s.ident), msgpack.packb(body)]


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as err:
        raise SchemaError(f"payload is not msgpack: {err}") from err


_NUMBER: Final = frozenset((int, float))
_I64: Final = 2**63 - 1
# Error messages show a bounded repr: a 1 KB message of nested lists must not become a
# RecursionError, nor a 15 MB body a 15 MB log line.
_SHOW: Final = reprlib.Repr()
_SHOW.maxlevel = 3
_SHOW.maxstring = _SHOW.maxother = 40
_SHOW.maxlist = _SHOW.maxdict = 10
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
        raise SchemaError(f"reading: sensor_id {_SHOW.repr(sensor_id)} breaks the id rules")
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


Row = tuple[int, float, float, float, float, int]  # ts_ns, raw, volts, amps, watts, flags


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
    sensor_id: str, session: str, seq: int, rows: Sequence[Row], dropped: int = 0
) -> list[bytes]:
    """The two frames of a batch: `[2, sensor_id, session, seq, dropped, [row, ...]]`, each row
    `[ts_ns, raw, volts, amps, watts, flags]` of the readings seq, seq + 1, ..."""
    return batch_frames(sensor_id, session, seq, pack_rows(rows), dropped)


def pack_row(row: Row) -> bytes:
    """A reading's measured fields, packed once: the message, the replay ring and replay
    answers all reuse these bytes (batch_payload splices them in)."""
    return _packb(row)


def pack_rows(rows: Iterable[Row]) -> list[bytes]:
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
            f"reading payload: expected 10 fields (v1) or a v2 batch, got {_SHOW.repr(body)}"
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
        and 0 <= seq <= _I64 - MAX_BATCH
        and 0 <= dropped <= _I64
        and len(rows) <= MAX_BATCH
        and (rows or dropped)
    ):
        raise SchemaError(f"reading batch: bad seq, dropped or rows in {_SHOW.repr(body)}")
    readings = []
    new, ok = _new_tuple, _row_ok
    for row in rows:
        if type(row) is not list or len(row) != 6 or not ok(*row):
            raise SchemaError(f"reading batch: bad row {_SHOW.repr(row)}")
        readings.append(new(Reading, (sensor_id, session, seq, *row)))
        seq += 1
    return new(ReadingBatch, (sensor_id, session, body[3], dropped, readings))


def _row_ok(ts_ns: Any, raw: Any, volts: Any, amps: Any, watts: Any, flags: Any) -> bool:
    """The checks of a reading's measured fields (one place for both versions)."""
    return (
        type(ts_ns) is int
        and type(flags) is int
        and -_I64 <= ts_ns <= _I64
        and 0 <= flags <= _I64
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
        raise SchemaError(f"reading payload: expected a list of 10 fields, got {_SHOW.repr(body)}")
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
            f"reading: schema version {_SHOW.repr(version)}, this build speaks {SCHEMA_VERSION}"
            f" (single) and {BATCH_VERSION} (batch)"
        )
    _ids(topic, sensor_id, session)
    measured_ok = _row_ok(ts_ns, raw, volts, amps, watts, flags)
    if not (type(seq) is int and 0 <= seq <= _I64 and measured_ok):
        raise SchemaError(f"reading: bad field types or ranges in {_SHOW.repr(body)}")
    return body


def _ids(topic: bytes, sensor_id: Any, session: Any) -> None:
    """sensor_id and session are non-empty strings, and the topic is the sensor's."""
    if type(sensor_id) is not str or type(session) is not str or not sensor_id or not session:
        raise SchemaError(
            f"reading: bad sensor_id/session {_SHOW.repr(sensor_id)}/{_SHOW.repr(session)}"
        )
    expected = _topics.get(sensor_id) or _topic(sensor_id)
    if topic != expected and bytes(topic) != expected:
        raise SchemaError(
            f"reading: topic {_SHOW.repr(topic)} does not match sensor_id {sensor_id!r}"
        )


_COUNTER_TYPES: Final = (str, int, float, bool, type(None))


def _counters_ok(counters: Any, depth: int = 0) -> bool:
    """Counters are names -> plain values, or one nested level of the same (restarts per
    child): anything a JSON line or a log can show."""
    return isinstance(counters, dict) and all(
        type(k) is str
        and (
            (type(v) in _COUNTER_TYPES and (type(v) is not float or isfinite(v)))
            or (depth == 0 and _counters_ok(v, 1))
        )
        for k, v in counters.items()
    )


def decode_status(frames: Sequence[bytes]) -> Status:
    """Parse and validate a status message; raise SchemaError for anything else."""
    if len(frames) != 2:
        raise SchemaError(f"expected 2 frames [topic, payload], got {len(frames)}")
    body = _unpack(bytes(frames[1]))
    if not isinstance(body, dict) or body.get("v") != SCHEMA_VERSION:
        raise SchemaError(f"status: expected a map with v={SCHEMA_VERSION}, got {_SHOW.repr(body)}")
    if not _counters_ok(body.get("counters")):
        raise SchemaError(
            f"status: counters must map names to plain values, got {_SHOW.repr(body)}"
        )
    try:
        counters = dict(body["counters"])
        process = str(body["process"])
        status = Status(
            process=process, ident=str(body["id"]), pid=int(body["pid"]), ts_ns=int(body["ts"]),
            state=str(body["state"]), counters=counters, started_ns=int(body.get("started", 0)),
            reader=_progress(counters) if process == "reader" else None,
            gone=_gone(body.get("gone", [])),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise SchemaError(f"status: missing or bad field: {err}") from err
    if bytes(frames[0]) != status_topic(status.process, status.ident):
        raise SchemaError(f"status: topic {_SHOW.repr(bytes(frames[0]))} does not match its body")
    return status


def _progress(counters: dict[str, Any]) -> ReaderProgress | None:
    """The typed part of a reader's heartbeat, read from its counters (which keep the keys, for
    display); None when the heartbeat has no session (a reader of another build); SchemaError
    when a field is bad."""
    if "session" not in counters:
        return None
    session, seq, readings, replay, last, key = (
        counters.get(k, d) for k, d in zip(_PROGRESS_KEYS, ("", 0, 0, "", 0, ""), strict=True)
    )
    if not (type(session) is str and type(replay) is str and session
            and all(type(x) is int and 0 <= x <= _I64 for x in (seq, readings, last))
            and type(key) is str and (not key or is_z85_key(key))):
        raise SchemaError(
            f"status: bad reader progress session={_SHOW.repr(session)} seq={_SHOW.repr(seq)} "
            f"readings={_SHOW.repr(readings)} replay={_SHOW.repr(replay)} "
            f"replay_key={_SHOW.repr(key)}"
        )
    problem, waiting = counters.get("problem", ""), counters.get("waiting_for_port", False)
    if type(problem) is not str or type(waiting) is not bool:
        raise SchemaError(
            f"status: bad reader problem={_SHOW.repr(problem)} "
            f"waiting_for_port={_SHOW.repr(waiting)}"
        )
    return ReaderProgress(session, seq, readings, replay, last, key, problem, waiting)


def _gone(items: Any) -> tuple[ReaderEnd, ...]:
    if not (isinstance(items, list) and len(items) <= MAX_GONE and all(
        type(i) is list and len(i) == 3 and type(i[0]) is str and type(i[1]) is str
        and type(i[2]) is int and 0 <= i[2] <= _I64 for i in items
    )):
        raise SchemaError(f"status: gone must be [[sensor, session, seq], ...], got "
                          f"{_SHOW.repr(items)}")
    return tuple(ReaderEnd(*i) for i in items)


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Ask a reader for readings first..last (inclusive) of one of its sessions."""

    session: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class ReplayReply:
    """What a reader still holds of the asked range, and what it holds at all.

    A ring payload may be a batch of one reading that names device samples dropped before it
    (ReadingBatch.dropped): those come as `dropped`, so a replayed reading brings its loss.

    `readings` are the asked readings still in the reader's ring (possibly fewer than asked,
    capped per reply); `available` is (first, last) of the whole ring, (0, -1) when empty or
    when `session` is not the reader's current session, so the asker can tell a range that is
    gone for good from one that merely did not fit in this reply.
    """

    sensor_id: str
    session: str
    available: tuple[int, int]
    readings: tuple[Reading, ...]
    dropped: tuple[tuple[int, int], ...] = ()  # (seq, count): device samples lost before seq


def encode_replay_request(req: ReplayRequest) -> bytes:
    return msgpack.packb([SCHEMA_VERSION, "replay", req.session, req.first, req.last])


def decode_replay_request(payload: bytes) -> ReplayRequest:
    body = _unpack(payload)
    if (
        not isinstance(body, list)
        or len(body) != 5
        or body[0] != SCHEMA_VERSION
        or body[1] != "replay"
        or not isinstance(body[2], str)
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in body[3:])
    ):
        raise SchemaError(
            f"replay request: expected [v, 'replay', session, first, last], got {_SHOW.repr(body)}"
        )
    return ReplayRequest(body[2], body[3], body[4])


def encode_replay_reply(
    sensor_id: str, session: str, available: tuple[int, int], payloads: Sequence[bytes]
) -> bytes:
    """Reading payloads go as they were published (already packed), nested as bin fields."""
    return msgpack.packb(
        [SCHEMA_VERSION, "replayed", sensor_id, session, list(available), list(payloads)],
        use_bin_type=True,
    )


def decode_replay_reply(payload: bytes) -> ReplayReply:
    body = _unpack(payload)
    if (
        not isinstance(body, list)
        or len(body) != 6
        or body[0] != SCHEMA_VERSION
        or body[1] != "replayed"
        or not isinstance(body[2], str)
        or not isinstance(body[3], str)
        or not isinstance(body[4], list)
        or len(body[4]) != 2
        or not all(type(x) is int and -_I64 <= x <= _I64 for x in body[4])
        or not isinstance(body[5], list)
    ):
        raise SchemaError(f"replay reply: malformed {_SHOW.repr(body)}")
    topic = reading_topic(body[2])
    readings: list[Reading] = []
    dropped: list[tuple[int, int]] = []
    for item in body[5]:
        if not isinstance(item, bytes):
            raise SchemaError("replay reply: a reading payload is not bytes")
        batch = decode_batch([topic, item])
        if batch.session != body[3]:  # it would fill the reply's hole with another's reading
            raise SchemaError(
                f"replay reply for session {body[3]!r} holds one of {batch.session!r}"
            )
        readings += batch.readings
        if batch.dropped:
            dropped.append((batch.seq, batch.dropped))
    available = (int(body[4][0]), int(body[4][1]))
    return ReplayReply(body[2], body[3], available, tuple(readings), tuple(dropped))
