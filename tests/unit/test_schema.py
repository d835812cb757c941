"""The wire schema round-trips, and anything else on the bus is rejected with SchemaError."""

from __future__ import annotations

import msgpack
import pytest

from powmon.base.text import flag_names, format_ts
from powmon.common.errors import SchemaError
from powmon.common.schema.envelope import BATCH_VERSION, SCHEMA_VERSION
from powmon.common.schema.readings import (
    MAX_BATCH,
    Flag,
    Reading,
    ReadingBatch,
    batch_frames,
    batch_payload,
    decode_batch,
    decode_reading,
    decode_readings,
    encode_batch,
    encode_reading,
    pack_row,
    pack_rows,
    reading_topic,
)
from powmon.common.schema.replay import decode_replay_reply, encode_replay_reply
from powmon.common.schema.status import Status, decode_status, encode_status
from tests.rows import csv_row

R = Reading("VIC", "a1b2c3", 7, 1_795_628_538_799_919_130, 531, 0.09277, 1.4056, 7.028, 1)


def test_reading_round_trip() -> None:
    """What a reader encodes, every receiver decodes to the same Reading."""
    assert decode_reading(encode_reading(R)) == R


def test_topic_ends_with_slash_so_prefixes_never_match_longer_ids() -> None:
    """A subscription to VIC must not receive VIC2."""
    assert reading_topic("VIC") == b"reading/VIC/"
    assert not reading_topic("VIC2").startswith(reading_topic("VIC"))


def test_status_round_trip() -> None:
    """Heartbeats carry process, id, pid, state and counters."""
    s = Status("reader", "VIC", 42, 1, "running", {"readings": 3, "port": "COM4"})
    assert decode_status(encode_status(s)) == s


@pytest.mark.parametrize(
    "frames",
    [
        [b"reading/VIC/"],
        [b"reading/VIC/", b"\xc1junk"],
        [b"reading/VIC/", msgpack.packb({"v": 1})],
        [b"reading/VIC/", msgpack.packb([SCHEMA_VERSION + 1, "VIC", "s", 0, 0, 1, 1, 1, 1, 0])],
        [b"reading/ATT/", encode_reading(R)[1]],
        [b"reading/VIC/", msgpack.packb([SCHEMA_VERSION, "VIC", "s", -1, 0, 1, 1.0, 1.0, 1.0, 0])],
        [b"reading/VIC/", msgpack.packb([SCHEMA_VERSION, "VIC", "s", 0, 0, "1", 1.0, 1.0, 1.0, 0])],
        [b"reading/VIC/", msgpack.packb([SCHEMA_VERSION, "VIC", "s", True, 0, 1, 1, 1, 1, 0])],
    ],
    ids=["one-frame", "not-msgpack", "map", "version", "topic-mismatch", "negative-seq",
         "string-raw", "bool-seq"],
)
def test_invalid_messages_raise_schema_error(frames: list[bytes]) -> None:
    """Every kind of malformed message is a SchemaError, never another exception."""
    with pytest.raises(SchemaError):
        decode_reading(frames)


def test_csv_row_keeps_raw_and_names_flags() -> None:
    """An over-range reading keeps its raw value; flags are readable names."""
    row = csv_row(R)
    assert row[0] == "2026-11-25T17:42:18.799919Z"
    assert row[1:5] == ("VIC", "a1b2c3", 7, 531)
    assert row[-1] == "over_range"
    assert flag_names(int(Flag.OVER_RANGE | Flag.AC_RMS)) == "over_range|ac_rms"
    assert flag_names(0) == ""


def test_format_ts_is_utc_with_microseconds() -> None:
    """One fixed timestamp format, UTC, across second boundaries."""
    assert format_ts(0) == "1970-01-01T00:00:00.000000Z"
    assert format_ts(1_999_999_999) == "1970-01-01T00:00:01.999999Z"
    assert format_ts(0) == "1970-01-01T00:00:00.000000Z"




TS0 = 1_795_628_538_799_919_130
ROWS = [(TS0 + 10_000_000 * i, 512 + i, 0.0, 0.0, 0.0, 0) for i in range(3)]


def test_a_batch_decodes_to_consecutive_readings_of_one_session() -> None:
    """Version 2: rows become Readings with seq, seq + 1, ... and the sensor and session."""
    frames = encode_batch("VIC", "s1", 40, ROWS, dropped=5)
    assert frames[0] == reading_topic("VIC")
    batch = decode_batch(frames)
    assert (batch.sensor_id, batch.session, batch.seq, batch.dropped) == ("VIC", "s1", 40, 5)
    assert batch.readings == [Reading("VIC", "s1", 40 + i, *row) for i, row in enumerate(ROWS)]
    assert decode_readings(frames) == batch.readings


def test_a_single_reading_decodes_as_a_batch_of_one() -> None:
    """decode_batch / decode_readings read version 1 too: every consumer reads both."""
    assert decode_readings(encode_reading(R)) == [R]
    assert decode_batch(encode_reading(R)) == ReadingBatch("VIC", "a1b2c3", 7, 0, [R])


def test_a_batch_of_rows_packed_once_is_the_batch_packed_whole() -> None:
    """batch_payload splices rows packed once (pack_row) behind a header: byte for byte what
    msgpack makes of the whole batch, at every array size (fixarray, array16, array32)."""
    for n in (1, 15, 16, 65535, 65536):
        rows = [(TS0 + i, 512 + i % 3, 0.25, -1.5, 3, i % 16) for i in range(n)]
        packed = pack_rows(rows)
        assert packed[0] == pack_row(rows[0])
        whole = msgpack.packb([BATCH_VERSION, "VIC", "s1", 40, 5, rows])
        assert batch_payload("VIC", "s1", 40, packed, 5) == whole
    frames = batch_frames("VIC", "s1", 9, [], dropped=7)
    assert frames[0] == reading_topic("VIC")
    assert decode_batch(frames) == ReadingBatch("VIC", "s1", 9, 7, [])


def test_a_replay_reply_brings_the_loss_named_by_a_payload() -> None:
    """A ring payload that names device samples lost before it: they come as `dropped`."""
    payloads = [batch_payload("VIC", "s1", 3, pack_rows(ROWS), dropped=2)]
    reply = decode_replay_reply(encode_replay_reply("VIC", "s1", (3, 5), payloads))
    assert [r.seq for r in reply.readings] == [3, 4, 5]
    assert reply.dropped == ((3, 2),)


def test_a_replay_reply_holding_another_sessions_reading_is_refused() -> None:
    """A reply for s1 carrying a reading of s2 (a buggy or hostile reader) would mark s1's
    hole filled with a reading that is not s1's: a SchemaError, counted and dropped."""
    payloads = [batch_payload("VIC", "s2", 3, pack_rows(ROWS))]
    with pytest.raises(SchemaError, match="replay reply for session 's1' holds one of 's2'"):
        decode_replay_reply(encode_replay_reply("VIC", "s1", (3, 5), payloads))


def test_decode_reading_refuses_a_batch() -> None:
    """decode_reading is for one reading; a batch needs decode_batch (no silent truncation)."""
    with pytest.raises(SchemaError, match="10 fields"):
        decode_reading(encode_batch("VIC", "s1", 0, ROWS))


def _batch(*fields: object) -> list[bytes]:
    return [b"reading/VIC/", msgpack.packb([BATCH_VERSION, *fields])]


@pytest.mark.parametrize(
    "frames",
    [
        _batch("VIC", "s1", 0, 0, []),  # nothing in it at all
        _batch("VIC", "s1", -1, 0, [list(ROWS[0])]),
        _batch("VIC", "s1", 0, -3, [list(ROWS[0])]),
        _batch("VIC", "s1", 0, 0, [list(ROWS[0])[:5]]),
        _batch("VIC", "s1", 0, 0, [[0, "512", 0.0, 0.0, 0.0, 0]]),
        _batch("VIC", "s1", 0, 0, [[0, 512, float("nan"), 0.0, 0.0, 0]]),
        _batch("VIC", "s1", 0, 0, [list(ROWS[0])] * (MAX_BATCH + 1)),
        _batch("VIC", "s1", 2**63 - 2, 0, [list(ROWS[0])]),
        _batch("VIC", "", 0, 0, [list(ROWS[0])]),
        [b"reading/ATT/", encode_batch("VIC", "s1", 0, ROWS)[1]],
        [b"reading/VIC/", msgpack.packb([BATCH_VERSION + 1, "VIC", "s1", 0, 0, []])],
    ],
    ids=[
        "empty",
        "negative-seq",
        "negative-dropped",
        "short-row",
        "string-raw",
        "nan",
        "too-many",
        "seq-overflow",
        "no-session",
        "topic-mismatch",
        "version",
    ],
)
def test_invalid_batches_raise_schema_error(frames: list[bytes]) -> None:
    """Every kind of malformed batch is a SchemaError, never another exception."""
    with pytest.raises(SchemaError):
        decode_batch(frames)
