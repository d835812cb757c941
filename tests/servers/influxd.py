"""A real InfluxDB 1.x (`influxd`, Debian's `influxdb`) started by a test on loopback ports.

Temporary config and directories, reporting off, only the HTTP API (and the RPC port influxd
always binds) on 127.0.0.1. Stop and start again on the same ports and data: an outage.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.helpers import Proc, free_tcp_port, unavailable, wait_until

TOOL = "influxd"

_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[retention]
  enabled = false
[shard-precreation]
  enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
"""


def require_influxd() -> str:
    """The influxd binary; skips outside CI (fails in CI) when it is not installed."""
    found = shutil.which(TOOL)
    if found is None:
        unavailable(TOOL, "influxd is not on PATH (bash tests/servers/install-deps.sh)")
    try:
        out = subprocess.run([found, "version"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        unavailable(TOOL, f"'influxd version' failed: {err}")
    if not out.stdout.startswith("InfluxDB v1."):
        unavailable(TOOL, f"expected InfluxDB 1.x, got {out.stdout.strip()!r}")
    return found


class Influxd:
    """influxd on a free loopback port; `url` is its base URL."""

    def __init__(self, root: Path) -> None:
        self.binary = require_influxd()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.config = root / "influxdb.conf"
        self.config.write_text(_CONFIG.format(root=root, port=self.port, rpc=free_tcp_port()))
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.proc = Proc([self.binary, "-config", str(self.config)],
                         self.root / f"influxd-{self.starts}.log")
        try:
            wait_until(self._pings, 30, interval=0.1, what="influxd answering /ping")
        except AssertionError:
            self.stop()
            raise

    def _pings(self) -> bool:
        if self.proc is not None and self.proc.popen.poll() is not None:
            raise AssertionError(f"influxd exited: {self.proc.output()[-2000:]}")
        try:
            return requests.get(f"{self.url}/ping", timeout=1).status_code == 204
        except requests.RequestException:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(sig)
            self.proc = None

    def query(self, db: str, q: str) -> Any:
        resp = requests.post(f"{self.url}/query", params={"db": db, "epoch": "ns"},
                             data={"q": q}, timeout=10)
        resp.raise_for_status()
        return json.loads(resp.text)

    def create_database(self, db: str) -> None:
        self.query(db, f'CREATE DATABASE "{db}"')

    def points(self, db: str, measurement: str) -> list[dict[str, Any]]:
        """Every point of `measurement`, as {column: value} (time in ns)."""
        select = f'SELECT * FROM "{measurement}"'  # noqa: S608 (InfluxQL, a test's own name)
        (result,) = self.query(db, select)["results"]
        out: list[dict[str, Any]] = []
        for series in result.get("series", []):
            out += [dict(zip(series["columns"], values, strict=True))
                    for values in series["values"]]
        return out
