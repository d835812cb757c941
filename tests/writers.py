"""A writer without sockets, for tests that feed it messages by hand: its core and its sink."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from powmon.common.replay import ReplayClient
from powmon.sink.bookkeeping import SinkCore
from powmon.writer.writer import CsvSink, WriterConfig


class Writer(NamedTuple):
    core: SinkCore
    csv: CsvSink


def make_writer(
    config: WriterConfig, client: ReplayClient | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Writer:
    csv = CsvSink(config, clock)
    return Writer(SinkCore(config.core(), csv, client, clock), csv)
