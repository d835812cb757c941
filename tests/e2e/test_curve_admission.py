"""Admission on a bus across hosts (docs/hosts.md), on real processes over loopback CURVE: a
refused host gets in at its reader's next restart once its key is in CURVE_AUTHORIZED; a key
taken out admits no new connection, while the connection it already has stays (what
common/zap.py does: the folder is consulted at each handshake, never for a live connection)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from powmon.common.transport import sub_socket
from tests.bus import Bus
from tests.helpers import Proc, free_endpoint, wait_until, write_settings
from tests.keys import broker_host, lab_keys, other_host, server_curve

pytestmark = pytest.mark.e2e

REFUSED = "refused this host's CURVE key"


def test_a_refused_host_gets_in_at_its_next_restart_and_a_removed_key_only_stops_new_ones(
    tmp_path: Path, spawn: Callable[..., Proc], zmq_ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """The Pi's `powmon run` starts its reader, which the broker refuses (key unknown): it
    exits 1 and is restarted with backoff. Its .key copied into CURVE_AUTHORIZED, a restart
    gets in and its readings flow. The .key removed: a second reader of that host is refused
    (exit 1), and the first one's readings keep flowing."""
    lab = lab_keys(tmp_path)
    pi_public, pi_secret = lab.stranger  # not in the broker's folder yet
    bus = {"BROKER_FRONTEND": free_endpoint(), "BROKER_BACKEND": free_endpoint()}
    broker_settings = write_settings(
        tmp_path / "lab.yaml", [{"PORT": "sim://LAB", "SENSORS_ID": "LAB"}], **bus,
        **broker_host(lab.broker[1], lab.authorized),
    )
    pi = other_host(pi_secret, lab.broker[0])
    pi_settings = write_settings(tmp_path / "pi.yaml", [{"PORT": "sim://P1", "SENSORS_ID": "P1"}],
                                 **bus, **pi, POLLING_DELAY=0.05, RESTART_BACKOFF_MAX=0.5)
    spawn([sys.executable, "-m", "powmon.broker", "--config", str(broker_settings)], "broker")
    lab_curve = server_curve(lab.broker[1], lab.authorized)
    watch = Bus(sub_socket(zmq_ctx, bus["BROKER_BACKEND"], [b"reading/", b"status/broker/"],
                           10_000, curve=lab_curve))
    try:
        wait_until(watch.all_statuses, timeout=30, what="the broker's heartbeat")

        def p1_readings() -> int:
            watch.pump()
            return sum(r.sensor_id == "P1" for r in watch.readings)

        run = spawn([sys.executable, "-m", "powmon", "run", "--config", str(pi_settings)], "run")
        wait_until(lambda: "reader P1 exited with code 1" in run.output(), timeout=30,
                   what="the refused reader's exit")
        assert REFUSED in run.output()
        assert p1_readings() == 0
        shutil.copy(pi_public, lab.authorized)
        wait_until(p1_readings, timeout=30, what="readings of the reader restarted after the copy")

        (lab.authorized / pi_public.name).unlink()
        second = write_settings(tmp_path / "pi-b.yaml", [{"PORT": "sim://P2", "SENSORS_ID": "P2"}],
                                **bus, **pi)
        other = spawn([sys.executable, "-m", "powmon.readers", "--config", str(second),
                       "--sensor-id", "P2"], "reader-P2")
        assert other.popen.wait(30) == 1
        assert REFUSED in other.output()
        before = p1_readings()
        wait_until(lambda: p1_readings() > before, timeout=30,
                   what="the admitted reader's readings still flowing")
        assert run.popen.poll() is None
    finally:
        watch.sock.close(linger=0)
