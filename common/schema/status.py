"""Heartbeats and events of processes on the wire: `status/<process>/<id>/`, a msgpack map.

A reader's heartbeat carries a typed part (ReaderProgress) that sinks and supervisors rely
on; a supervisor's names the readers that ended (ReaderEnd). Everything else is counters, for
people and dashboards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import isfinite
from typing import Any, Final

import msgpack

from powmon.common.curvezmq import is_z85_key
from powmon.common.errors import SchemaError
from powmon.common.schema.envelope import I64, SCHEMA_VERSION, SHOW, STATUS_PREFIX, unpack

# Status.state values. STOPPED is a process's last heartbeat: after it, nothing more comes
# from that process (a reader has closed its replay socket too).
STATE_RUNNING: Final = "running"
STATE_DISCONNECTED: Final = "disconnected"  # a reader without its device
STATE_STOPPED: Final = "stopped"


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


def status_topic(process: str, ident: str) -> bytes:
    return STATUS_PREFIX + process.encode() + b"/" + ident.encode() + b"/"


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
    body = unpack(bytes(frames[1]))
    if not isinstance(body, dict) or body.get("v") != SCHEMA_VERSION:
        raise SchemaError(f"status: expected a map with v={SCHEMA_VERSION}, got {SHOW.repr(body)}")
    if not _counters_ok(body.get("counters")):
        raise SchemaError(
            f"status: counters must map names to plain values, got {SHOW.repr(body)}"
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
        raise SchemaError(f"status: topic {SHOW.repr(bytes(frames[0]))} does not match its body")
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
            and all(type(x) is int and 0 <= x <= I64 for x in (seq, readings, last))
            and type(key) is str and (not key or is_z85_key(key))):
        raise SchemaError(
            f"status: bad reader progress session={SHOW.repr(session)} seq={SHOW.repr(seq)} "
            f"readings={SHOW.repr(readings)} replay={SHOW.repr(replay)} "
            f"replay_key={SHOW.repr(key)}"
        )
    problem, waiting = counters.get("problem", ""), counters.get("waiting_for_port", False)
    if type(problem) is not str or type(waiting) is not bool:
        raise SchemaError(
            f"status: bad reader problem={SHOW.repr(problem)} "
            f"waiting_for_port={SHOW.repr(waiting)}"
        )
    return ReaderProgress(session, seq, readings, replay, last, key, problem, waiting)


def _gone(items: Any) -> tuple[ReaderEnd, ...]:
    if not (isinstance(items, list) and len(items) <= MAX_GONE and all(
        type(i) is list and len(i) == 3 and type(i[0]) is str and type(i[1]) is str
        and type(i[2]) is int and 0 <= i[2] <= I64 for i in items
    )):
        raise SchemaError(f"status: gone must be [[sensor, session, seq], ...], got "
                          f"{SHOW.repr(items)}")
    return tuple(ReaderEnd(*i) for i in items)
