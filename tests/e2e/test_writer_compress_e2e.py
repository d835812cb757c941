"""COMPRESS on real processes: a broker, a writer with a small FILE_SIZE_LIMIT and a reader of
a simulated board. The writer's closed files become .csv.gz while the current one stays .csv,
and every reading the reader published is stored exactly once across them."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from powmon.base.storage import FileNaming, compression_of, list_files
from tests.bus import BusEnd
from tests.helpers import (
    Proc,
    data_keys,
    lost_rows,
    published,
    python_module,
    wait_until,
    write_settings,
)

pytestmark = pytest.mark.e2e

SENSOR = [{"PORT": "sim://Z0?amps=1", "SENSORS_ID": "Z0"}]


def test_closed_files_are_gzipped_the_current_stays_plain_and_no_reading_is_lost(
    tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
    bus_for: Callable[[Path], BusEnd],
) -> None:
    settings = write_settings(tmp_path / "settings.yaml", SENSOR, POLLING_DELAY=0.002,
                              FILE_SIZE_LIMIT=8192)  # COMPRESS: gzip, the default
    data = tmp_path / "data"
    broker(settings)
    bus = bus_for(settings)
    writer = spawn(python_module("powmon.writer", "--config", str(settings)), "writer")
    reader = spawn(python_module("powmon.readers", "--config", str(settings), "--sensor-id",
                                 "Z0"), "reader")
    bus.wait("writer", "closed files compressed", lambda c: c["files_compressed"] >= 4)
    assert reader.stop(signal.SIGTERM) == 0
    taken = published(reader.output())["Z0"]
    wait_until(lambda: len(data_keys(data)) >= taken, timeout=30, what="every reading stored")
    counters = bus.wait("writer", "every closed file compressed",
                        lambda c: c["compress_pending"] == 0 and c["pending"] == 0)
    assert writer.stop(signal.SIGTERM) == 0, writer.output()

    files = [path for _, path in list_files(data, FileNaming.from_data_file("data.csv"))]
    assert [compression_of(p) for p in files] == ["gzip"] * (len(files) - 1) + [None]
    assert not list(data.glob("*.csv.gz.tmp"))
    keys = data_keys(data)
    assert max(Counter(keys).values()) == 1, "a reading stored twice"
    [session] = {s for _, s, _ in keys}
    assert sorted(keys) == [("Z0", session, seq) for seq in range(taken)]
    assert lost_rows(data) == []
    assert counters["compress_errors"] == 0
    assert counters["files_compressed"] >= 4
    assert 0 < counters["compress_bytes_after"] < counters["compress_bytes_before"]
    log = writer.output()
    assert f"compressed {files[0].name.removesuffix('.gz')}: " in log
