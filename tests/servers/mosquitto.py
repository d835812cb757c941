"""A real Mosquitto broker (Debian's `mosquitto`) started by a test on a free loopback port,
and a paho subscriber that keeps what it receives.

The broker can be killed (-9) and started again on the same port: an outage. Persistence is
off unless asked for: a restarted broker then has no retained messages, as after a crash of
a broker without a persistence file, which is what the uplink must survive.
"""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import free_tcp_port, unavailable, wait_until
from tests.servers import ServerProc

TOOL = "mosquitto"


def require_mosquitto() -> str:
    found = shutil.which(TOOL) or shutil.which("/usr/sbin/mosquitto")
    if found is None:
        unavailable(TOOL, "mosquitto is not installed (bash tests/servers/install-deps.sh)")
    try:
        subprocess.run([found, "-h"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        unavailable(TOOL, f"'mosquitto -h' failed: {err}")
    return found


class Mosquitto(ServerProc):
    """mosquitto -c <tmp conf>: listener 127.0.0.1:<port>, anonymous unless `extra` says."""

    name = "mosquitto"

    def __init__(self, root: Path, extra: str = "") -> None:
        super().__init__(root)
        self.binary = require_mosquitto()
        self.port = free_tcp_port()
        self.config = root / "mosquitto.conf"
        self.config.write_text(
            # `user`: started as root, mosquitto would switch to user mosquitto, who cannot
            # read the test's files; as anyone else it stays who it is anyway.
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"log_dest stderr\nuser {getpass.getuser()}\n{extra}"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, "-c", str(self.config)]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


class Subscriber:
    """A paho client subscribed to `topic` (QoS 1) that keeps every message, reconnecting by
    itself (paho's loop) when the broker comes back."""

    def __init__(self, port: int, topic: str, client_id: str = "powmon-test-sub") -> None:
        self.messages: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self._topic = topic
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10, what=f"subscribed to {topic}")

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe(self._topic, qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def snapshot(self) -> list[paho.MQTTMessage]:
        with self._lock:
            return list(self.messages)

    def json(self, where: Callable[[paho.MQTTMessage], bool] = lambda m: True) -> list[Any]:
        return [json.loads(m.payload) for m in self.snapshot() if where(m)]

    def latest(self, topic: str) -> paho.MQTTMessage | None:
        found = [m for m in self.snapshot() if m.topic == topic]
        return found[-1] if found else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
