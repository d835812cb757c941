"""The MQTT output: every spooled reading published with QoS 1, acked only after its PUBACK.

paho keeps in-flight messages in memory only, so PowMon's spool is the durability, not paho:
a row is done for this output (positions.py) only once the broker's PUBACK for it came. Each
connection is its own paho Client, created for it and thrown away when it drops
(reconnect_on_failure=False): whatever it had in flight is forgotten with it and published
again from the spool on the next connection (at least once; a duplicate carries the same
sensor_id, session and seq). Nothing survives in paho's memory to be resent behind PowMon's
back, and a restart of PowMon or of the broker loses nothing. clean_session: PowMon only
publishes, so a persistent broker session would hold nothing the spool does not.

Reconnecting is the shared core's retry loop (capped backoff; worker.Worker), and while idle
`idle()` keeps the connection up with the same cap. The network loop is paho's own thread
(loop_start; mqtt_connection.py); publishing, waiting for PUBACKs and connecting happen on
the output's Worker thread; the receive loop only feeds the Home Assistant Presence
(homeassistant.py).

Payload: JSON with the CSV columns (timestamp, sensor_id, session, seq, raw, volts, amps,
watts, flags) plus ts_ns, on the topic MQTT_TOPIC (default `powmon/{sensor_id}`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from powmon.base.text import reading_dict
from powmon.common.backoff import backoff
from powmon.common.schema.readings import Reading
from powmon.common.schema.status import Status
from powmon.uplink.contract import Answer, BusWatcher, Encoded, Output, Wait, ids
from powmon.uplink.formats import non_finite
from powmon.uplink.homeassistant import Presence
from powmon.uplink.mqtt_config import BATCH_SIZE, BATCH_WAIT, MqttConfig
from powmon.uplink.mqtt_connection import QOS, Connection
from powmon.uplink.spool import Spooled

log = logging.getLogger(__name__)

TICK_S: Final = 0.2
STOPPING: Final = "stopping"


@dataclass(frozen=True, slots=True)
class Batch:
    """One round of messages: (topic, payload, row), each published on its own."""

    messages: tuple[tuple[str, bytes, Spooled], ...]


def topic_for(template: str, r: Reading) -> str:
    return template.format(sensor_id=r.sensor_id, session=r.session)


def _problem(topic: str, r: Reading) -> str | None:
    if "+" in topic or "#" in topic or "\x00" in topic:
        return f"MQTT topic {topic!r} would contain a wildcard or NUL (from {r.sensor_id!r})"
    return non_finite(r)


class MqttOutput(Output[Batch], BusWatcher):
    """Publishes spooled readings to the broker of MQTT_URL; Home Assistant on the side."""

    name = "mqtt"

    def __init__(self, cfg: MqttConfig) -> None:
        self._cfg = cfg
        self.where = cfg.where
        self.batch_size, self.batch_wait = BATCH_SIZE, BATCH_WAIT
        self.backoff_max = cfg.backoff_max
        self.presence = Presence(cfg)
        self._conn: Connection | None = None
        self._interrupted = threading.Event()
        self._delays = self._reconnect_delays()
        self._next_connect = 0.0
        self._last_tick = 0.0

    def _reconnect_delays(self) -> Iterator[float]:
        return backoff(initial=min(0.5, self.backoff_max), cap=self.backoff_max)

    # hooks from the receive loop (any thread) ----------------------------------------

    def on_readings(self, readings: Sequence[Reading]) -> None:
        self.presence.on_readings(readings)

    def on_status(self, status: Status) -> None:
        self.presence.on_status(status)

    def interrupt(self) -> None:
        self._interrupted.set()

    # the output's thread ---------------------------------------------------------------

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close(graceful=True)
            self._conn = None

    def idle(self) -> Answer | None:
        """Nothing to send: keep the connection (and Home Assistant) up all the same; a
        broker that refuses the login or the client id is reported (the core's `refused`),
        and so is being let in again."""
        conn = self._conn
        if conn is not None and not conn.up:
            self._drop(conn, conn.lost or "connection down")
        answer = None
        if self._conn is None and time.monotonic() >= self._next_connect:
            failed = self._connect()
            if failed is None:
                answer = Answer()
            elif failed.wait is Wait.REFUSED:
                answer = failed
        self._tick()
        return answer

    def _connect(self) -> Answer | None:
        if self._conn is not None and self._conn.up:
            return None
        if self._conn is not None:
            self._conn.close(graceful=False)
            self._conn = None
        conn = Connection(self._cfg)
        failed = conn.open()
        if failed is not None:
            self._next_connect = time.monotonic() + next(self._delays)
            return failed
        self._conn = conn
        self._delays = self._reconnect_delays()
        log.info("mqtt: connected to %s as %s", self.where, self._cfg.client_id)
        self.presence.connected()
        self._tick(force=True)
        return None

    def _tick(self, force: bool = False) -> None:
        now = time.monotonic()
        conn = self._conn
        if conn is not None and conn.up and (force or now - self._last_tick >= TICK_S):
            self._last_tick = now

            def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
                conn.publish(topic, payload, qos, retain)  # QoS 0 state: a lost one is stale

            self.presence.tick(publish)

    def encode(self, rows: Sequence[Spooled]) -> Encoded[Batch]:
        messages: list[tuple[str, bytes, Spooled]] = []
        rejected: list[tuple[int, str]] = []
        for row in rows:
            topic = topic_for(self._cfg.topic, row.reading)
            why = _problem(topic, row.reading)
            if why is not None:
                rejected.append((row.id, why))
                continue
            body = json.dumps(reading_dict(row.reading), ensure_ascii=False, allow_nan=False,
                              separators=(",", ":"))
            messages.append((topic, body.encode(), row))
        return Encoded([Batch(tuple(messages))] if messages else [], rejected)

    def send(self, request: Batch) -> Answer:
        rows = [row for _, _, row in request.messages]
        failed = self._connect()
        if failed is not None:
            return Answer(again=(tuple(rows),), wait=failed.wait, detail=failed.detail)
        conn = self._conn
        if conn is None:  # _connect() returned None, so this cannot be; typing says otherwise
            return Answer.retry(rows, "not connected")
        mids: dict[int, Spooled] = {}
        conn.forget_acks()
        for topic, payload, row in request.messages:
            mid = conn.publish(topic, payload, QOS, False)
            if mid is None:
                break
            mids[mid] = row
        acked, why = self._wait_acks(conn, mids)
        if len(mids) < len(request.messages) and not why:
            why = "the connection dropped while publishing"
        done = {mids[mid].id for mid in acked}
        left = tuple(row for row in rows if row.id not in done)
        if not left:
            return Answer.ok(rows)
        acked_rows = ids([row for row in rows if row.id in done])
        if why == STOPPING:  # not a failure: the rest stays spooled for the next start
            return Answer(done=acked_rows, again=(left,), detail=why)
        self._drop(conn, why)
        return Answer(done=acked_rows, again=(left,), wait=Wait.RETRY, detail=why)

    def _wait_acks(self, conn: Connection, mids: dict[int, Spooled]) -> tuple[set[int], str]:
        """Wait until every mid is acked, the connection drops, the output is stopped, or no
        PUBACK came for MQTT_TIMEOUT; (the acked mids, why it ended early)."""
        timeout = self._cfg.timeout
        progress, seen = time.monotonic(), 0
        while True:
            with conn.cond:
                acked = conn.acked & mids.keys()
                if len(acked) == len(mids):
                    return acked, ""
                if conn.lost is not None:
                    return acked, conn.lost
                conn.cond.wait(TICK_S)
            if self._interrupted.is_set():
                return acked, STOPPING
            now = time.monotonic()
            if len(acked) > seen:
                progress, seen = now, len(acked)
            elif now - progress > timeout:
                return acked, f"no PUBACK from {self.where} within {timeout:g}s"
            self._tick()

    def _drop(self, conn: Connection, why: str) -> None:
        log.warning("mqtt: connection to %s lost (%s); what it had not acknowledged goes "
                    "again", self.where, why)
        conn.close(graceful=False)
        self._conn = None
        self._next_connect = time.monotonic() + next(self._delays)
