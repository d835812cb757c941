"""SYNC_WRITE really fsyncs: a real writer (its run() on a thread, real sockets) with os.fsync
spied on, recording which file each fsync was for and how big it was then."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import zmq

from powmon.common.schema.readings import Reading, encode_reading
from powmon.common.settings import load_settings
from powmon.writer.writer import WriterConfig, run
from tests.helpers import data_rows, wait_until, write_settings

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")

ROWS = 50


@pytest.mark.parametrize("sync", [True, False])
def test_sync_write_fsyncs_the_data_file_after_a_flush_and_only_then(
    tmp_path: Path, zmq_ctx: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch,
    sync: bool,
) -> None:
    """SYNC_WRITE true: the data file is fsynced once its rows are written (the fsync sees the
    file at its full size); false: the data file is never fsynced."""
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    settings = write_settings(tmp_path / "settings.yaml", [{"PORT": "sim://V", "SENSORS_ID": "V"}],
                              SYNC_WRITE=sync)
    config = WriterConfig.from_settings(load_settings(settings))
    bus = zmq_ctx.socket(zmq.XPUB)  # the broker's backend, as far as the writer can tell
    bus.bind(config.backend)
    stop = threading.Event()
    writer = threading.Thread(target=run, args=(config, stop), daemon=True)
    writer.start()
    try:
        wait_until(lambda: bus.poll(0), what="the writer's subscription")
        for seq in range(ROWS):
            bus.send_multipart(encode_reading(Reading("V", "s1", seq, seq, 512, 0.0, 0.0, 0.0)))
        wait_until(lambda: len(data_rows(config.data_root)) == ROWS, what="the rows on disk")
    finally:
        stop.set()
        writer.join(10)
    assert not writer.is_alive()
    [path] = config.data_root.glob("data-*.csv")
    sizes = [size for name, size in synced if name == os.path.realpath(path)]
    if sync:
        assert sizes, f"no fsync of {path}; fsynced: {synced}"
        assert sizes[-1] == path.stat().st_size  # after the last rows were written
    else:
        assert sizes == []
    bus.close()
