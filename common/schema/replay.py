"""The replay protocol's messages: a request for a range of a session, and its answer.

A reply carries the readings' payloads as the reader published them (already packed, nested
as bin fields), so a replay costs no packing; common.replay holds the sockets that carry them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from powmon.common.errors import SchemaError
from powmon.common.schema.envelope import I64, SCHEMA_VERSION, SHOW, unpack
from powmon.common.schema.readings import Reading, decode_batch, reading_topic


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
    body = unpack(payload)
    if (
        not isinstance(body, list)
        or len(body) != 5
        or body[0] != SCHEMA_VERSION
        or body[1] != "replay"
        or not isinstance(body[2], str)
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in body[3:])
    ):
        raise SchemaError(
            f"replay request: expected [v, 'replay', session, first, last], got {SHOW.repr(body)}"
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
    body = unpack(payload)
    if (
        not isinstance(body, list)
        or len(body) != 6
        or body[0] != SCHEMA_VERSION
        or body[1] != "replayed"
        or not isinstance(body[2], str)
        or not isinstance(body[3], str)
        or not isinstance(body[4], list)
        or len(body[4]) != 2
        or not all(type(x) is int and -I64 <= x <= I64 for x in body[4])
        or not isinstance(body[5], list)
    ):
        raise SchemaError(f"replay reply: malformed {SHOW.repr(body)}")
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
