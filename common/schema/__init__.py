"""The wire format of the PowMon bus: the only package that knows how messages look in bytes.

A message is two ZeroMQ frames, `[topic, payload]`, the payload msgpack (envelope). One module
per kind of message: `readings` (a reading or a batch, on `reading/<sensor_id>/`), `status`
(heartbeats and events, on `status/<process>/<id>/`), `replay` (the replay protocol's request
and answer). `decode_message` is the one answer to "a status or readings?" for a subscriber
that takes both.
"""

from __future__ import annotations

from collections.abc import Sequence

from powmon.common.errors import SchemaError
from powmon.common.schema.envelope import STATUS_PREFIX
from powmon.common.schema.readings import ReadingBatch, decode_batch
from powmon.common.schema.status import Status, decode_status


def decode_message(frames: Sequence[bytes]) -> ReadingBatch | Status:
    """A message off the bus, decoded by its topic: a Status for `status/...`, else the
    ReadingBatch of a reading message (either version); SchemaError for anything else."""
    if not frames:
        raise SchemaError("expected 2 frames [topic, payload], got 0")
    if frames[0].startswith(STATUS_PREFIX):
        return decode_status(frames)
    return decode_batch(frames)
