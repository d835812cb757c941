"""`powmon web` against a real pipeline on simulated sensors: metrics, files, token, and clients
that never read (issue #12)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Proc, data_rows, free_tcp_port, python_module, wait_until, write_settings
from tests.pipeline import SENSORS, Web, report_when, start_pipeline, start_web

pytestmark = pytest.mark.e2e


def _samples(web: Web) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape, parsed by prometheus-client's own parser: (name, labels) -> value."""
    response = web.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_parse_and_counters_grow_between_scrapes(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """/metrics parses with prometheus-client's parser, every name is powmon_*, each process is
    up, and the per-sensor readings counters grow from one scrape to the next."""
    pipe = start_pipeline(spawn, tmp_path)
    web = start_web(spawn, pipe.settings)
    report_when(web, lambda r: r["ok"], "pipeline up")
    first = _samples(web)
    assert all(name.startswith("powmon_") for name, _ in first)
    for process in ("broker", "writer", "reader/VIC", "reader/ATT"):
        assert first[("powmon_process_up", (("process", process),))] == 1.0
    assert first[("powmon_pipeline_up", ())] == 1.0
    assert ("powmon_file_bytes", ()) in first

    def grown() -> bool:
        later = _samples(web)
        return all(
            later[("powmon_readings_total", (("sensor", s),))]
            > first[("powmon_readings_total", (("sensor", s),))]
            for s in SENSORS
        )

    wait_until(grown, timeout=20, interval=0.3, what="readings counters growing")


def test_web_stops_cleanly_with_a_stream_open(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    """SIGTERM with an event stream open: the stream ends (the server closes it, no read
    timeout), nothing is logged as an error, and the process exits 0."""
    pipe = start_pipeline(spawn, tmp_path, sensors=("VIC",))
    web = start_web(spawn, pipe.settings)
    with requests.get(web.url + "/events", stream=True, timeout=10) as live:
        lines = live.iter_lines(decode_unicode=True)
        assert next(lines) == "event: hello"
        assert web.proc.stop(signal.SIGTERM) == 0
        list(lines)  # returns only because the server closed the stream
    out = web.proc.output()
    assert "web stopped" in out
    assert "ERROR" not in out and "Traceback" not in out, out


def test_files_are_listed_and_downloaded_but_nothing_else(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """/files/ lists the CSV files with links; a listed file downloads (the current one too,
    while the writer appends: whole rows as they were at the start); names with paths, files
    that are not CSV and symlinks out of the folder are 404. /report summarises each sensor."""
    pipe = start_pipeline(spawn, tmp_path)
    web = start_web(spawn, pipe.settings)
    wait_until(lambda: data_rows(pipe.data), timeout=30, what="rows")
    secret = tmp_path / "secret.csv"
    secret.write_text("not for the web\n", encoding="utf-8")
    (pipe.data / "link.csv").symlink_to(secret)
    (pipe.data / "notes.txt").write_text("x", encoding="utf-8")
    listing = web.get("/files/").text
    (name,) = re.findall(r'href="/files/(data-[^"]+\.csv)"', listing)
    assert "link.csv" not in listing and "notes.txt" not in listing
    got = web.get(f"/files/{name}")
    assert got.status_code == 200
    assert got.text.startswith("timestamp,sensor_id,session,seq,")
    assert got.text.endswith("\n")  # whole rows only, although the writer is appending
    assert (pipe.data / name).read_text(encoding="utf-8").startswith(got.text)
    for bad in ("link.csv", "notes.txt", "..%2Fsecret.csv", "%2E%2E%2Fsettings.yaml",
                "..%5Csecret.csv", "nothing.csv"):
        assert web.get(f"/files/{bad}").status_code == 404, bad
    assert web.get("/files/../settings.yaml").status_code == 404
    report = web.get("/report").text
    assert all(f"<td>{s}</td>" in report for s in SENSORS)


def test_the_token_is_needed_for_data_when_set(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    """With WEB_TOKEN: no token or a wrong one is 401; the Bearer header or ?token= is let in;
    the page itself (no data) loads without, so it can say what is missing."""
    token = "lab-token-123"  # noqa: S105 (a test value)
    pipe = start_pipeline(spawn, tmp_path, sensors=("VIC",), WEB_TOKEN=token)
    good = {"Authorization": "Bearer lab-token-123"}
    web = start_web(spawn, pipe.settings, headers=good)
    assert web.get("/api/status").status_code == 401
    assert web.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert web.get("/metrics?token=lab-token-12").status_code == 401
    assert web.get("/metrics", headers=good).status_code == 200
    assert web.get("/api/status?token=lab-token-123").status_code == 200
    assert web.get("/").status_code == 200
    assert web.get("/static/uPlot.iife.min.js").status_code == 200


@pytest.mark.parametrize("how", ["option", "setting"])
def test_a_non_loopback_address_without_a_token_is_refused_at_start(
    tmp_path: Path, how: str
) -> None:
    """`--listen 0.0.0.0:PORT` (or WEB_LISTEN) without WEB_TOKEN: exit 2 and one line saying
    what to do; nothing is bound."""
    port = free_tcp_port()
    extra = {"WEB_LISTEN": f"0.0.0.0:{port}"} if how == "setting" else {}
    settings = write_settings(tmp_path / "s.yaml", [{"PORT": "sim://A", "SENSORS_ID": "A"}],
                              **extra)
    argv = python_module("powmon.web", "--config", str(settings))
    if how == "option":
        argv += ["--listen", f"0.0.0.0:{port}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"WEB_TOKEN: required to listen on 0.0.0.0:{port}, which is not a loopback" in lines[0]


@contextlib.contextmanager
def _stalled_clients(web: Web, n: int) -> Iterator[list[socket.socket]]:
    """n connections that ask for every reading and then never read a byte."""
    host, port = web.url.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, int(port)))
            s.sendall(f"GET /events?readings=1 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def _reader_published(proc: Proc) -> int:
    (line,) = [x for x in proc.output().splitlines() if "reader stop sensor=" in x]
    return int(re.search(r"readings=(\d+)", line)[1])  # type: ignore[index]


@pytest.mark.skipif(sys.platform != "linux", reason="socket buffer sizes as on Linux")
def test_twenty_clients_that_never_read_cost_the_pipeline_nothing(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    """Twenty event-stream clients that never read: the web process drops their oldest events
    and counts them, a reading client still gets its events, and the writer stores every
    reading of every session exactly once."""
    pipe = start_pipeline(spawn, tmp_path, POLLING_DELAY=0.001)
    web = start_web(spawn, pipe.settings)
    with _stalled_clients(web, 20):
        report_when(web, lambda r: r["web"]["clients"] >= 20, "20 clients connected")
        report_when(web, lambda r: r["web"]["dropped_events"] > 0, "events dropped",
                    timeout=60)
        with requests.get(web.url + "/events", stream=True, timeout=10) as live:
            names = []
            for line in live.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    names.append(line.removeprefix("event: "))
                if names.count("points") >= 3:
                    break
        assert names[:2] == ["hello", "status"]
        metrics = web.get("/metrics").text
        dropped = re.search(r"^powmon_web_dropped_events_total (\S+)$", metrics, re.M)
        assert dropped is not None and float(dropped[1]) > 0
        assert metrics.count("powmon_web_client_dropped_events_total{") >= 20
    published = {}
    for sensor, reader in pipe.readers.items():
        assert reader.stop(signal.SIGTERM) == 0
        published[sensor] = _reader_published(reader)
    assert pipe.writer.stop(signal.SIGTERM) == 0
    keys = [(r["sensor_id"], r["session"], int(r["seq"])) for r in data_rows(pipe.data)]
    assert len(keys) == len(set(keys)), "a reading stored twice"
    for sensor in SENSORS:
        mine = sorted(seq for s, _, seq in keys if s == sensor)
        assert mine == list(range(published[sensor])), f"{sensor}: not every reading stored"
    assert not (pipe.data / "gaps.csv").exists()
    assert json.loads(web.get("/api/status").text)["web"]["bad_messages"] == 0
