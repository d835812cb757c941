"""What every message of the bus shares: the versions, the topic prefixes, bounded error text.

A message is two ZeroMQ frames, `[topic, payload]`, the payload msgpack. Topics end with '/' so
that a prefix subscription to `reading/VIC/` never matches `reading/VIC2/`.
"""

from __future__ import annotations

import reprlib
from typing import Any, Final

import msgpack

from powmon.common.errors import SchemaError

SCHEMA_VERSION: Final = 1  # single readings, statuses, replay messages
BATCH_VERSION: Final = 2  # a batch of readings (readings.encode_batch)
READING_PREFIX: Final = b"reading/"
STATUS_PREFIX: Final = b"status/"
I64: Final = 2**63 - 1
# Error messages show a bounded repr: a 1 KB message of nested lists must not become a
# RecursionError, nor a 15 MB body a 15 MB log line.
SHOW: Final = reprlib.Repr()
SHOW.maxlevel = 3
SHOW.maxstring = SHOW.maxother = 40
SHOW.maxlist = SHOW.maxdict = 10


def unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as err:
        raise SchemaError(f"payload is not msgpack: {err}") from err
