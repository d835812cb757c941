"""The wire schema round-trips, and anything else on the bus is rejected with SchemaError."""

from __future__ import annotations

import msgpack
import pytest

from powmon.common.errors import SchemaError
from powmon.common.schema import (
    SCHEMA_VERSION,
    Flag,
    Reading,
    Status,
    csv_row,
    decode_reading,
    decode_status,
    encode_reading,
    encode_status,
    flag_names,
    format_ts,
    reading_topic,
)

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
)  # fmt: skip
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


