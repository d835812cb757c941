"""One MQTT connection: a paho Client made for it, its CONNACK, PUBACKs and disconnect.

Thrown away when it drops (reconnect_on_failure=False), with whatever paho held in memory for
it: mqtt.py publishes again from the spool on the next Connection. The last will marks the
Home Assistant availability topic offline.
"""

from __future__ import annotations

import ssl
import threading
import time
import warnings
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from powmon.uplink.contract import Answer
from powmon.uplink.homeassistant import OFFLINE, availability_topic
from powmon.uplink.mqtt_config import MqttConfig

QOS: Final = 1
MAX_INFLIGHT: Final = 100
CLOSE_WAIT_S: Final = 1.0
# CONNACK reason codes that no retry can cure: fix the settings (state `refused`).
REFUSED_CODES: Final = frozenset({133, 134, 135})  # client id, user/password, not authorised


class Connection:
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

    def forget_acks(self) -> None:
        """Before a batch: drop the acks of earlier messages. paho numbers messages 1..65535
        and starts again, so an old ack (a QoS 0 state, a batch that ended early) must not
        stand for a new message that got the same number; the set also stays batch-sized."""
        with self.cond:
            self.acked.clear()

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
