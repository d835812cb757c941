"""Several hosts (issue #13 item 4): readers on another host reach the broker over CURVE.

Host A runs the broker (bound to its own, non-loopback address), the writer and a tap; host B
runs readers. Preferably A and B are two network namespaces joined by a veth pair (the traffic
between them is captured on the veth); else two loopback addresses (tests/hosts.py).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from powmon.common.curvezmq import is_z85_key
from tests.helpers import (
    Proc,
    data_rows,
    free_tcp_port,
    python_module,
    unavailable,
    wait_until,
    write_settings,
)
from tests.hosts import Hosts, loopback_hosts, namespaces
from tests.keys import broker_host, lab_keys, other_host

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(params=["netns", "loopback"])
def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hosts]:
    """Two hosts: network namespaces (fails in CI where POWMON_REQUIRE names netns, skips
    elsewhere when the machine does not allow them), and two loopback addresses."""
    with contextlib.ExitStack() as stack:
        try:
            if request.param == "netns":
                made = stack.enter_context(namespaces(tmp_path))
            else:
                made = stack.enter_context(loopback_hosts())
        except (OSError, subprocess.SubprocessError) as err:
            if request.param == "netns":
                unavailable("netns", f"cannot make network namespaces here: {err}")
            pytest.skip(f"127.0.0.2 is not a loopback address here: {err}")
        yield made


def _tap_lines(tap: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in tap.output().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def _status(tap: Proc, process: str, ident: str) -> dict[str, Any] | None:
    """The last heartbeat the tap printed of one process."""
    found = [r for r in _tap_lines(tap) if r.get("status") == process and r.get("id") == ident]
    return found[-1] if found else None


@dataclass(frozen=True)
class Lab:
    """The settings files of the two hosts: A's (broker), and two readers' on B."""

    a: Path
    b1: Path
    b2: Path
    known: str
    stranger: str


def _lab(hosts: Hosts, tmp: Path) -> Lab:
    """Keys made with `powmon keygen --curve`; pi1's public key authorised, pi2's not."""
    keys = lab_keys(tmp)
    broker_pub, broker_secret = keys.broker
    pi1_secret, pi2_secret = keys.known[1], keys.stranger[1]
    authorized = keys.authorized
    known, stranger = f"K{secrets.token_hex(5)}", f"S{secrets.token_hex(5)}"
    front, back = free_tcp_port(), free_tcp_port()
    for name in ("a", "b1", "b2"):
        (tmp / name).mkdir()
    backend = f"tcp://{hosts.a}:{back}"
    a = write_settings(
        tmp / "a" / "settings.yaml",
        [{"PORT": "sim://LAB", "SENSORS_ID": "LAB"}],
        BROKER_FRONTEND=f"tcp://{hosts.a}:{front}",
        BROKER_BACKEND=backend,
        **broker_host(broker_secret, authorized),
    )
    frontend_b = hosts.frontend_for_b(front)

    def host_b(name: str, sensor: str, secret: Path) -> Path:
        return write_settings(
            tmp / name / "settings.yaml",
            [{"PORT": f"sim://{sensor}?amps=2.5", "SENSORS_ID": sensor}],
            POLLING_DELAY=0.02,
            BROKER_FRONTEND=frontend_b,
            BROKER_BACKEND=backend,
            **other_host(secret, broker_pub),
        )

    return Lab(a, host_b("b1", known, pi1_secret), host_b("b2", stranger, pi2_secret), known,
               stranger)


def _reader_beat(tap: Proc, sensor: str, seq: int) -> dict[str, Any] | None:
    beat = _status(tap, "reader", sensor)
    return beat if beat is not None and beat["counters"]["seq"] >= seq else None


def _refusals(tap: Proc) -> int:
    beat = _status(tap, "broker", "broker")
    return int(beat["counters"].get("curve_refused", 0)) if beat is not None else 0


def _stored_from_zero(data: Path, sensor: str) -> list[dict[str, str]]:
    """The sensor's rows once they run from seq 0 without a hole (and there are 80)."""
    rows = [r for r in data_rows(data) if r["sensor_id"] == sensor]
    seqs = sorted(int(r["seq"]) for r in rows)
    return rows if len(seqs) > 80 and seqs == list(range(len(seqs))) else []


def test_readers_on_another_host_over_curve(
    hosts: Hosts, tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """A reader on host B with an authorised key is admitted: its readings reach the writer on
    host A, and the readings it took before the writer started come by replay from B, over
    CURVE too (its heartbeat announces B's address and its key). A reader with a key the
    broker does not know is refused: it exits 1 saying which key to authorise, none of its
    readings are stored, and the broker logs the refusal with B's address and counts it
    (`curve_refused`). `powmon status` on B reports B's reader up. On the wire between the
    hosts the sensor ids and the topics never show in clear."""
    lab = _lab(hosts, tmp_path)

    def run(host: str, name: str, *argv: str) -> Proc:
        return spawn(hosts.argv(host, python_module(*argv)), name)

    broker = run("a", "broker", "powmon.broker", "--config", str(lab.a))
    tap = run("a", "tap", "powmon", "tap", "--status", "--json", "--config", str(lab.a))
    wait_until(lambda: _status(tap, "broker", "broker"), timeout=30, what="the broker's beat")
    reader = run("b", "reader", "powmon.readers", "--config", str(lab.b1), "--sensor-id",
                 lab.known)
    beat = wait_until(lambda: _reader_beat(tap, lab.known, 50), timeout=30, what="50 readings")
    assert beat is not None
    assert beat["counters"]["replay"].startswith(f"tcp://{hosts.b}:")
    assert is_z85_key(beat["counters"]["replay_key"])

    writer = run("a", "writer", "powmon.writer", "--config", str(lab.a))
    data = lab.a.parent / "data"
    rows = wait_until(lambda: _stored_from_zero(data, lab.known), timeout=30, what="seq 0..")
    assert any("replayed" in r["flags"] for r in rows)

    refused = run("b", "refused", "powmon.readers", "--config", str(lab.b2), "--sensor-id",
                  lab.stranger)
    assert refused.popen.wait(30) == 1, refused.output()
    assert "refused this host's CURVE key" in refused.output()
    wait_until(lambda: _refusals(tap) >= 1, what="curve_refused in the broker's heartbeat")
    assert f"refused a client from {hosts.seen_as_b}" in broker.output()

    status = subprocess.run(
        hosts.argv("b", python_module("powmon", "status", "--json", "--config", str(lab.b1))),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["sensors"][lab.known]["rate"] > 0

    assert reader.stop() == 0
    assert writer.stop() == 0
    assert not [r for r in data_rows(data) if r["sensor_id"] == lab.stranger]
    wire = hosts.captured()
    assert len(wire) > 10_000  # the capture saw the traffic ...
    assert b"CURVE" in wire  # ... whose ZMTP greeting names the mechanism in clear ...
    for clear in (lab.known.encode(), lab.stranger.encode(), b"reading/", b"status/"):
        assert clear not in wire  # ... and nothing else
