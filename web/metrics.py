"""`/metrics`: the health report in Prometheus text format, read at scrape time.

A custom prometheus-client Collector turns the same report that `powmon status --json` prints
into metric families, so the numbers on the page, in the status command and in Grafana are one
set. Every name starts with `powmon_`; docs/web.md lists them. Counters are the processes' own
totals and restart from 0 when a process restarts, as Prometheus' rate() expects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Report = Callable[[float], dict[str, Any]]

# (metric, help, report key) of the per-sensor numbers
_SENSOR_COUNTERS = (
    ("powmon_readings", "Readings published by the sensor's reader (this session)", "readings"),
    ("powmon_bad_lines", "Answers from the device that were not a reading", "bad_lines"),
    ("powmon_timeouts", "Requests the device did not answer within TIMEOUT", "timeouts"),
    ("powmon_reconnects", "Times the device was opened again after a loss", "reconnects"),
    ("powmon_energy_wh", "Energy measured by the sensor, watt-hours (writer)", "energy_wh"),
)
_SENSOR_GAUGES = (
    ("powmon_reading_rate", "Readings per second, from the reader's heartbeats", "rate"),
    ("powmon_last_reading_age_seconds", "Seconds since the sensor's last reading", "age_s"),
    ("powmon_watts", "Watts of the sensor's latest reading", "watts"),
    ("powmon_amps", "Amps of the sensor's latest reading", "amps"),
)


class HealthCollector(Collector):
    """Reads the report at each scrape; nothing is kept between scrapes."""

    def __init__(self, report: Report) -> None:
        self._report = report

    def collect(self) -> Iterator[Metric]:
        report = self._report(time.monotonic())
        yield from _sensors(report["sensors"])
        yield from _processes(report["processes"])
        yield from _sinks(report)
        yield from _web(report.get("web") or {})
        ok = GaugeMetricFamily("powmon_pipeline_up", "1 when `powmon status` would exit 0")
        ok.add_metric([], 1.0 if report["ok"] else 0.0)
        yield ok


def _sensors(sensors: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    kinds = ((CounterMetricFamily, _SENSOR_COUNTERS), (GaugeMetricFamily, _SENSOR_GAUGES))
    for family, table in kinds:
        for name, doc, key in table:
            metric = family(name, doc, labels=["sensor"])
            for sensor, s in sensors.items():
                _one(metric, [sensor], s[key])
            yield metric


def _processes(procs: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    up = GaugeMetricFamily("powmon_process_up", "1 when the process heartbeats", labels=["process"])
    restarts = CounterMetricFamily(
        "powmon_restarts", "Restarts by powmon run", labels=["process"]
    )
    for name, p in procs.items():
        up.add_metric([name], 1.0 if p["up"] else 0.0)
        if p["restarts"] is not None:
            restarts.add_metric([name], float(p["restarts"]))
    yield up
    yield restarts


def _one(
    metric: CounterMetricFamily | GaugeMetricFamily, labels: list[str], value: object
) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        metric.add_metric(labels, float(value))


def _sinks(report: dict[str, Any]) -> Iterator[Metric]:
    writer, uplink = report["writer"] or {}, report["uplink"] or {}
    gaps = CounterMetricFamily("powmon_gaps", "Holes in seq the writer detected",
                               labels=["process"])
    lost = CounterMetricFamily("powmon_lost_readings", "Readings given up for good",
                               labels=["process"])
    _one(gaps, ["writer"], writer.get("gaps"))
    _one(lost, ["writer"], writer.get("lost"))
    _one(lost, ["uplink"], uplink.get("lost"))
    rows = CounterMetricFamily("powmon_rows_written", "Rows the writer wrote to CSV")
    _one(rows, [], writer.get("rows"))
    size = GaugeMetricFamily("powmon_file_bytes", "Bytes in the writer's current CSV file")
    _one(size, [], writer.get("bytes_in_file"))
    spool = GaugeMetricFamily("powmon_spool_depth", "Readings waiting in the uplink's spool")
    _one(spool, [], uplink.get("spool_depth"))
    yield from (gaps, lost, rows, size, spool)


def _web(web: dict[str, Any]) -> Iterator[Metric]:
    clients = GaugeMetricFamily("powmon_web_clients", "Event-stream clients connected now")
    _one(clients, [], web.get("clients"))
    dropped = CounterMetricFamily(
        "powmon_web_dropped_events", "Events dropped for slow clients (bounded queues)"
    )
    _one(dropped, [], web.get("dropped_events"))
    per_client = CounterMetricFamily(
        "powmon_web_client_dropped_events", "Events dropped per connected client",
        labels=["client"],
    )
    for client in web.get("per_client", []):
        per_client.add_metric([client["client"]], float(client["dropped"]))
    yield from (clients, dropped, per_client)


def registry(report: Report) -> CollectorRegistry:
    """A registry of PowMon's collector alone (no default process metrics: every name is
    powmon_*); `generate_latest(registry)` is the scrape body."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HealthCollector(report))
    return reg
