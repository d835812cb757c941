"""A real InfluxDB 1.x (`influxd`, Debian's `influxdb`) started by a test on loopback ports.

Temporary config and directories, reporting off, only the HTTP API (and the RPC port influxd
always binds) on 127.0.0.1. Stop and start again on the same ports and data: an outage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.helpers import free_tcp_port, unavailable
from tests.servers import ServerProc

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


class Influxd(ServerProc):
    """influxd on a free loopback port; `url` is its base URL."""

    name = "influxd"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.binary = require_influxd()
        self.port = free_tcp_port()
        self.config = root / "influxdb.conf"
        self.config.write_text(_CONFIG.format(root=root, port=self.port, rpc=free_tcp_port()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, "-config", str(self.config)]

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/ping", timeout=1).status_code == 204
        except requests.RequestException:
            return False

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
