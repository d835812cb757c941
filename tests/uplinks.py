"""An uplink without sockets of its own, for tests that feed it from a bus they made: its core,
its sink and the spool's counters (the outputs' threads are not started)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from powmon.common.settings import Secret
from powmon.sink.bookkeeping import SinkCore
from powmon.uplink.config import UplinkConfig
from powmon.uplink.http_output import HttpConfig
from powmon.uplink.outputs import Outputs
from powmon.uplink.registry import HTTP_KIND, Configured
from powmon.uplink.spool import Spool
from powmon.uplink.uplink import SpoolSink, Stats


class Uplink(NamedTuple):
    core: SinkCore
    sink: SpoolSink
    stats: Stats


def config(spool_path: Path, heartbeat_interval: float = 1.0) -> UplinkConfig:
    http = HttpConfig(
        url=Secret("http://127.0.0.1:9/ingest"), format="json", batch_size=10, batch_wait=0.05,
        timeout=2.0, backoff_max=0.2, verify_tls=True, headers={}, authorization=None,
        measurement="power",
    )
    return UplinkConfig(
        broker_frontend="tcp://127.0.0.1:1", broker_backend="tcp://127.0.0.1:2", hwm=1000,
        heartbeat_interval=heartbeat_interval, spool_path=spool_path, spool_max=10_000,
        configured=(Configured(HTTP_KIND, http),),
    )


def make_uplink(spool: Spool, heartbeat_interval: float = 1.0) -> Uplink:
    """A core over `spool`; a long heartbeat interval gives holes a long replay grace."""
    cfg = config(spool.path, heartbeat_interval)
    stats = Stats()
    sink = SpoolSink(spool, Outputs(cfg), stats)
    return Uplink(SinkCore(cfg.core(), sink), sink, stats)
