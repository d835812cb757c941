"""Helpers for output tests: a real Worker on its thread over a real spool file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from powmon.common.schema.readings import Reading
from powmon.common.settings import Secret
from powmon.uplink.contract import Output
from powmon.uplink.http_output import HttpConfig
from powmon.uplink.mqtt_config import MqttConfig
from powmon.uplink.positions import Position, register_outputs
from powmon.uplink.spool import Spool
from powmon.uplink.worker import Worker


def reading(seq: int, session: str = "s1", sensor: str = "VIC") -> Reading:
    return Reading(sensor, session, seq, 1_700_000_000_000_000_000 + seq, 512.0, 0.02, 0.3, 1.5)


def http_config(url: str, **kw: Any) -> HttpConfig:
    cfg = HttpConfig(
        url=Secret(url), format="json", batch_size=10, batch_wait=0.05, timeout=2.0,
        backoff_max=0.2, verify_tls=True, headers={}, authorization=None, measurement="power",
    )
    return replace(cfg, **kw)


def mqtt_config(port: int, **kw: Any) -> MqttConfig:
    cfg = MqttConfig(
        host="127.0.0.1", port=port, tls=False, username=None, password=None, ca_certs=None,
        certfile=None, keyfile=None, tls_insecure=False, client_id="powmon-test", keepalive=30,
        timeout=3.0, backoff_max=0.3, topic="powmon/{sensor_id}", discovery="homeassistant",
        state_interval=0.3, heartbeat_interval=0.2, sensors=("VIC",),
    )
    return replace(cfg, **kw)


class Running:
    """A Worker for `output` on its thread, plus a spool connection for the test to fill and
    inspect. `names` are the outputs registered in the spool (default: just this one)."""

    def __init__(self, output: Output[Any], path: Path, spool_max: int = 10_000,
                 names: Sequence[str] | None = None) -> None:
        self.spool = Spool(path, spool_max)
        register_outputs(self.spool, list(names or [output.name]))
        self.position = Position(self.spool, output.name)
        self.worker = Worker(output, path, spool_max)
        self.worker.start()

    @property
    def stats(self) -> Any:
        return self.worker.stats

    def add(self, readings: Sequence[Reading]) -> None:
        self.spool.add(readings)
        self.worker.poke()

    def depth(self) -> int:
        return self.position.depth()

    def close(self) -> None:
        self.worker.stop()
        stopped = self.worker.join(10)
        self.spool.close()
        assert stopped, "the worker did not stop"
