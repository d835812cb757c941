"""The MQTT output: every spooled reading published with QoS 1, acked only after its PUBACK.

paho keeps in-flight messages in memory only, so PowMon's spool is the durability, not paho:
a row is done for this output (positions.py) only once the broker's PUBACK for it came. Each
connection is its own paho Client, created for it and thrown away when it drops
(reconnect_on_failure=False): whatever it had in flight is forgotten with it and published
again from the spool on the next connection (at least once; a duplicate carries the same
sensor_id, session and seq). Nothing survives in paho's memory to be resent behind PowMon's
back, and a restart of PowMon or of the broker loses nothing. clean_session: PowMon only
publishes, so a persistent broker session would hold nothing the spool does not.

Reconnecting is the shared core's retry loop (capped backoff; sender.Worker), and while idle
`idle()` keeps the connection up with the same cap. The network loop is paho's own thread
(loop_start); publishing, waiting for PUBACKs and connecting happen on the output's Worker
thread; the receive loop only feeds the Home Assistant Presence (homeassistant.py).

Payload: JSON with the CSV columns (timestamp, sensor_id, session, seq, raw, volts, amps,
watts, flags) plus ts_ns, on the topic MQTT_TOPIC (default `powmon/{sensor_id}`).
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from powmon.common.backoff import backoff
from powmon.common.schema import Reading, Status, reading_dict
from powmon.uplink.contract import Answer, Encoded, Output, Wait, ids
from powmon.uplink.homeassistant import OFFLINE, Presence, availability_topic
from powmon.uplink.mqtt_config import BATCH_SIZE, BATCH_WAIT, MqttConfig
from powmon.uplink.spool import Row

log = logging.getLogger(__name__)

QOS: Final = 1
MAX_INFLIGHT: Final = 100
TICK_S: Final = 0.2
CLOSE_WAIT_S: Final = 1.0
STOPPING: Final = "stopping"
# CONNACK reason codes that no retry can cure: fix the settings (state `refused`).
REFUSED_CODES: Final = frozenset({133, 134, 135})  # client id, user/password, not authorised


@dataclass(frozen=True, slots=True)
class Batch:
    """One round of messages: (topic, payload, row), each published on its own."""

    messages: tuple[tuple[str, bytes, Row], ...]


def topic_for(template: str, r: Reading) -> str:
    return template.format(sensor_id=r.sensor_id, session=r.session)


def _problem(topic: str, r: Reading) -> str | None:
    if "+" in topic or "#" in topic or "\x00" in topic:
        return f"MQTT topic {topic!r} would contain a wildcard or NUL (from {r.sensor_id!r})"
    for name in ("raw", "volts", "amps", "watts"):
        if not math.isfinite(getattr(r, name)):
            return f"{name} is {getattr(r, name)!r}, which JSON cannot carry"
    return None


class _Connection:
    """One paho client and what it heard: CONNACK, PUBACKs, the disconnect."""

    def __init__(self, cfg: MqttConfig) -> None:
        self.cfg = cfg
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=True,
            protocol=paho.MQTTv311, reconnect_on_failure=False,
        )
        if cfg.username is not None:
            password = cfg.password.reveal() if cfg.password is not None else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls:
            client.tls_set(
                ca_certs=cfg.ca_certs, certfile=cfg.certfile, keyfile=cfg.keyfile,
                cert_reqs=ssl.CERT_NONE if cfg.tls_insecure else ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(cfg.tls_insecure)
        client.will_set(availability_topic(cfg), OFFLINE, qos=QOS, retain=True)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.connect_timeout = cfg.timeout
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.lost: str | None = None
        self.acked: set[int] = set()

    # paho's thread -------------------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        with self.cond:
            self.connack = reason
            self.cond.notify_all()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Any) -> None:
        with self.cond:
            self.lost = f"disconnected ({reason})"
            self.cond.notify_all()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        with self.cond:
            self.acked.add(mid)
            self.cond.notify_all()

    # the output's thread ---------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.lost is None and self.connack is not None and not self.connack.is_failure

    def open(self) -> Answer | None:
        """Connect and wait for the CONNACK; None when up, else what to tell the core."""
        where = self.cfg.where
        failed = None
        # paho drops the socket of a failed TLS handshake without closing it; it is closed
        # when the exception goes, here, and the ResourceWarning that says so is expected.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                self.client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive)
            except (OSError, ValueError) as err:  # refused, unreachable, TLS (SSLError)
                failed = f"cannot connect to {where}: {err}"
        if failed is not None:
            return Answer.retry((), failed)
        self.client.loop_start()
        deadline = time.monotonic() + self.cfg.timeout
        with self.cond:
            while self.connack is None and self.lost is None and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
        if self.up:
            return None
        reason = self.connack
        self.close(graceful=False)
        if reason is None:
            return Answer.retry((), f"no CONNACK from {where} within {self.cfg.timeout:g}s")
        if reason.value in REFUSED_CODES:
            return Answer.refused((), f"{where} refused the connection: {reason}")
        return Answer.retry((), f"{where} refused the connection: {reason}")

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        """Queue one message; its mid, or None if the connection is gone."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.mid if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def close(self, graceful: bool = True) -> None:
        if graceful and self.up:
            mid = self.publish(availability_topic(self.cfg), OFFLINE.encode(), QOS, True)
            deadline = time.monotonic() + CLOSE_WAIT_S
            with self.cond:
                while mid is not None and mid not in self.acked and self.up:
                    if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                        break
        self.client.disconnect()
        self.client.loop_stop()


class MqttOutput(Output[Batch]):
    """Publishes spooled readings to the broker of MQTT_URL; Home Assistant on the side."""

    name = "mqtt"

    def __init__(self, cfg: MqttConfig) -> None:
        self._cfg = cfg
        self.where = cfg.where
        self.batch_size, self.batch_wait = BATCH_SIZE, BATCH_WAIT
        self.backoff_max = cfg.backoff_max
        self.presence = Presence(cfg)
        self._conn: _Connection | None = None
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

    def idle(self) -> None:
        """Nothing to send: keep the connection (and Home Assistant) up all the same."""
        conn = self._conn
        if conn is not None and not conn.up:
            self._drop(conn, conn.lost or "connection down")
        if self._conn is None and time.monotonic() >= self._next_connect:
            self._connect()
        self._tick()

    def _connect(self) -> Answer | None:
        if self._conn is not None and self._conn.up:
            return None
        if self._conn is not None:
            self._conn.close(graceful=False)
            self._conn = None
        conn = _Connection(self._cfg)
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

    def encode(self, rows: Sequence[Row]) -> Encoded[Batch]:
        messages: list[tuple[str, bytes, Row]] = []
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
        mids: dict[int, Row] = {}
        for topic, payload, row in request.messages:
            mid = conn.publish(topic, payload, QOS, False)
            if mid is None:
                break
            mids[mid] = row
        acked, why = self._wait_acks(conn, mids)
        done = {mids[mid].id for mid in acked}
        left = tuple(row for row in rows if row.id not in done)
        if not left:
            return Answer.ok(rows)
        acked_rows = ids([row for row in rows if row.id in done])
        if why == STOPPING:  # not a failure: the rest stays spooled for the next start
            return Answer(done=acked_rows, again=(left,), detail=why)
        self._drop(conn, why)
        return Answer(done=acked_rows, again=(left,), wait=Wait.RETRY, detail=why)

    def _wait_acks(self, conn: _Connection, mids: dict[int, Row]) -> tuple[set[int], str]:
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

    def _drop(self, conn: _Connection, why: str) -> None:
        log.warning("mqtt: connection to %s lost (%s); what it had not acknowledged goes "
                    "again", self.where, why)
        conn.close(graceful=False)
        self._conn = None
        self._next_connect = time.monotonic() + next(self._delays)
