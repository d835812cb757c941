"""The uplink's outputs as one group: built from the config's enabled kinds (registry.py),
each on a Worker of its own.

This is what the uplink's receive loop talks to: `poke()` after committing readings,
`check()` every round (a dead Worker ends the process with exit 1), `on_readings(readings)`
and `on_status(status)` for the outputs that are also BusWatchers (MQTT: Home Assistant state
and availability), `counters()` for the heartbeat, `shutdown()` at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Final

from powmon.common.schema.readings import Reading
from powmon.common.schema.status import Status
from powmon.uplink.config import UplinkConfig
from powmon.uplink.contract import BusWatcher
from powmon.uplink.positions import register_outputs
from powmon.uplink.spool import Spool
from powmon.uplink.worker import Worker

log = logging.getLogger(__name__)

JOIN_MARGIN_S: Final = 1.0
_SUMMED: Final = ("sent", "batches_ok", "retries", "dead_lettered")


class Outputs:
    """Every enabled output of one uplink process."""

    def __init__(self, config: UplinkConfig) -> None:
        self.outputs = [c.output() for c in config.configured]
        self.watchers = [o for o in self.outputs if isinstance(o, BusWatcher)]
        self.workers = [Worker(o, config.spool_path, config.spool_max) for o in self.outputs]
        self.join_timeout = max(c.config.timeout for c in config.configured) + JOIN_MARGIN_S

    def start(self, spool: Spool) -> None:
        """Register the positions (new outputs, removed ones; positions.py), then start."""
        register_outputs(spool, [o.name for o in self.outputs])
        for worker in self.workers:
            worker.start()

    def describe(self) -> str:
        return " ".join(f"{o.name}={o.where}" for o in self.outputs)

    def poke(self, added: int | None = None) -> None:
        """`added` readings were just committed (None: an unknown number)."""
        for worker in self.workers:
            worker.poke(added)

    def check(self) -> None:
        for worker in self.workers:
            worker.check()

    def on_readings(self, readings: Sequence[Reading]) -> None:
        for watcher in self.watchers:
            watcher.on_readings(readings)

    def on_status(self, status: Status) -> None:
        for watcher in self.watchers:
            watcher.on_status(status)

    def shutdown(self) -> list[str]:
        """Stop every Worker and wait for each, all within join_timeout; the names of those
        still delivering (their rows stay spooled and go on the next start)."""
        for worker in self.workers:
            worker.stop()
        deadline = time.monotonic() + self.join_timeout
        return [
            w.output.name
            for w in self.workers
            if not w.join(max(0.0, deadline - time.monotonic()))
        ]

    def counters(self) -> dict[str, Any]:
        """`output_<name>`: each output's counters; plus the sums the heartbeat always had."""
        out: dict[str, Any] = {f"output_{w.output.name}": w.stats.counters() for w in self.workers}
        for key in _SUMMED:
            out[key] = sum(getattr(w.stats, key) for w in self.workers)
        out["last_success_ns"] = max((w.stats.last_success_ns for w in self.workers), default=0)
        errors = [w.stats.last_error for w in self.workers if w.stats.last_error]
        out["last_error"] = errors[-1] if errors else ""
        return out

    def summary(self) -> None:
        """One INFO line per output."""
        for w in self.workers:
            s = w.stats
            last = (time.strftime("%H:%M:%SZ", time.gmtime(s.last_success_ns / 1e9))
                    if s.last_success_ns else "never")
            log.info("output %s state=%s depth=%d sent=%d batches=%d retries=%d dead=%d "
                     "dropped=%d last_ok=%s%s", w.output.name, s.state, s.spool_depth, s.sent,
                     s.batches_ok, s.retries, s.dead_lettered, s.dropped_over_cap, last,
                     f" reason={s.reason}" if s.reason else "")
