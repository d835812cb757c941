"""The web page's data path without a server: buckets, bounded client queues, the hub."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from powmon.base.health import Expected
from powmon.common.curvezmq import is_loopback
from powmon.common.errors import SettingsError
from powmon.common.schema.readings import Reading, encode_batch, encode_reading
from powmon.common.schema.status import Status, encode_status
from powmon.common.settings import load_settings
from powmon.web.config import WebConfig
from powmon.web.hub import MAX_CLIENTS, Hub
from powmon.web.stream import CLOSE_AFTER_S, Client, Downsampler, sse
from tests.helpers import write_settings

MS = 1_000_000
T0 = 1_800_000_000_000 * MS  # a multiple of the 250 ms bucket


def _events(client: Client) -> list[tuple[str, object]]:
    """What the client's queue holds, decoded: (event name, JSON data)."""
    out = []
    while client.queued:
        raw = asyncio.run(client.get())
        assert raw is not None
        lines = raw.decode().splitlines()
        out.append((lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))))
    return out


def test_readings_become_one_point_per_bucket_with_min_max_mean_last() -> None:
    """Readings of one 250 ms bucket give one point; a reading of the next bucket closes it."""
    d = Downsampler()
    for i, watts in enumerate([10.0, 14.0, 12.0]):
        d.add("A", T0 + i * 50 * MS, watts, now=0.0)
    d.add("A", T0 + 260 * MS, 20.0, now=0.1)
    assert d.take(now=0.1) == {"A": [(T0 // MS, 12.0, 10.0, 14.0, 12.0, 3)]}
    assert d.take(now=0.1) == {}


def test_a_silent_sensor_bucket_closes_by_local_time() -> None:
    """No later reading comes: the open bucket is sent CLOSE_AFTER_S after its first reading."""
    d = Downsampler()
    d.add("A", T0, 5.0, now=10.0)
    assert d.take(now=10.0 + CLOSE_AFTER_S / 2) == {}
    assert d.take(now=10.0 + CLOSE_AFTER_S) == {"A": [(T0 // MS, 5.0, 5.0, 5.0, 5.0, 1)]}


def test_late_readings_stay_out_of_the_chart_and_history_is_bounded() -> None:
    """A reading older than the open bucket (a replay) is counted, not drawn; the history ring
    keeps HISTORY_S worth of points per sensor."""
    d = Downsampler(bucket_s=0.25, history_s=1.0)
    for i in range(10):
        d.add("A", T0 + i * 250 * MS, float(i), now=0.0)
    d.add("A", T0, 99.0, now=0.0)
    assert d.late == 1
    assert [p[1] for p in d.snapshot()["A"]] == [5.0, 6.0, 7.0, 8.0]


def test_a_full_client_queue_drops_its_oldest_event_and_counts_it() -> None:
    """Past maxlen the oldest event goes; the newest are kept, and the drop is counted."""
    client = Client("peer", readings=False, maxlen=3)
    results = [client.put(sse("n", i)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert client.dropped == 2
    assert [data for _, data in _events(client)] == [2, 3, 4]


def test_a_closed_client_ends_its_stream() -> None:
    """After close() (the server stops) get() returns None instead of waiting forever."""
    client = Client("peer", readings=False)
    client.close()
    assert asyncio.run(client.get()) is None


def _hub(tmp_path: Path) -> Hub:
    path = write_settings(tmp_path / "s.yaml", [{"PORT": "sim://A", "SENSORS_ID": "A"}])
    return Hub(Expected.from_settings(load_settings(path)))


def test_hub_sends_history_first_then_points_and_status(tmp_path: Path) -> None:
    """A new client gets `hello` (with the history) and `status` at once; ticks then bring
    `points`; a client asking for readings also gets each `reading`."""
    hub = _hub(tmp_path)
    hub.on_message(encode_reading(Reading("A", "s", 0, T0, 600, 0.4, 6.0, 30.0)), 0.0)
    hub.tick(CLOSE_AFTER_S)
    plain = hub.connect("p1", readings=False, now=1.0)
    raw = hub.connect("p2", readings=True, now=1.0)
    assert plain is not None and raw is not None
    hello = _events(plain)
    assert [name for name, _ in hello] == ["hello", "status"]
    assert hello[0][1]["history"]["A"][0][1] == 30.0  # type: ignore[index]
    hub.on_message(encode_reading(Reading("A", "s", 1, T0 + 300 * MS, 601, 0.4, 7.0, 35.0)), 1.0)
    hub.on_message(encode_status(Status("writer", "writer", 5, T0, "running", {})), 1.0)
    hub.tick(1.0 + CLOSE_AFTER_S)
    assert [name for name, _ in _events(plain)] == ["points", "status"]
    assert [name for name, _ in _events(raw)][2:] == ["reading", "points", "status"]
    assert hub.report(2.0)["processes"]["writer"]["up"]


def test_hub_takes_every_reading_of_a_batch(tmp_path: Path) -> None:
    """A streaming reader's batch message: each reading counted, charted and sent to a client
    that asked for readings, in order."""
    hub = _hub(tmp_path)
    raw = hub.connect("p", readings=True, now=0.0)
    assert raw is not None
    rows = [(T0 + i * 10 * MS, 600 + i, 0.4, 6.0, 30.0 + i, 0) for i in range(3)]
    hub.on_message(encode_batch("A", "s", 0, rows), 0.0)
    assert hub.readings == 3
    sent = [event for name, event in _events(raw) if name == "reading"]
    assert [event["seq"] for event in sent] == [0, 1, 2]  # type: ignore[index]


def test_hub_counts_bad_messages_and_bounds_clients(tmp_path: Path) -> None:
    """Junk off the bus is counted, not raised; past MAX_CLIENTS a connection is refused."""
    hub = _hub(tmp_path)
    hub.on_message([b"reading/A/", b"\xc1"], 0.0)
    hub.on_message([b"status/x/"], 0.0)
    assert hub.bad_messages == 2
    for n in range(MAX_CLIENTS):
        assert hub.connect(f"p{n}", readings=False, now=0.0) is not None
    assert hub.connect("one too many", readings=False, now=0.0) is None
    assert hub.counters()["refused"] == 1


def test_dropped_events_are_counted_per_client_and_in_total(tmp_path: Path) -> None:
    """A client that never reads loses its oldest events; the hub's total and the client's own
    count both show it (they go to /metrics)."""
    hub = _hub(tmp_path)
    slow = hub.connect("slow", readings=False, now=0.0)
    assert slow is not None
    slow.maxlen = 4
    for n in range(10):
        hub.tick(float(n + 1) * 2)  # a status event each time
    assert slow.dropped == hub.dropped_total == 8
    assert hub.report(30.0)["web"]["per_client"][0]["dropped"] == 8


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("lab-pc.example", False),
])
def test_which_addresses_are_loopback(host: str, loopback: bool) -> None:
    """Only loopback addresses and 'localhost' count; any other name may resolve anywhere."""
    assert is_loopback(host) is loopback


def test_a_non_loopback_address_needs_a_token(tmp_path: Path) -> None:
    """WEB_LISTEN on 0.0.0.0 without WEB_TOKEN: a SettingsError naming the key and address;
    with a token it is accepted, and --listen overrides WEB_LISTEN."""
    sensors = [{"PORT": "sim://A", "SENSORS_ID": "A"}]
    bare = load_settings(write_settings(tmp_path / "a.yaml", sensors, WEB_LISTEN="0.0.0.0:8080"))
    with pytest.raises(SettingsError, match=r"WEB_TOKEN: required to listen on 0\.0\.0\.0:8080"):
        WebConfig.from_settings(bare)
    assert WebConfig.from_settings(bare, ("127.0.0.1", 9000)).port == 9000
    secret = "s3cret-token"  # noqa: S105 (a test value)
    with_token = load_settings(write_settings(tmp_path / "b.yaml", sensors,
                                              WEB_LISTEN="0.0.0.0:8080", WEB_TOKEN=secret))
    config = WebConfig.from_settings(with_token)
    assert (config.host, config.port, config.token) == ("0.0.0.0", 8080, "s3cret-token")


@pytest.mark.parametrize("value", ["8080", "localhost", "127.0.0.1:0", "127.0.0.1:70000",
                                   "::1:8080", "http://127.0.0.1:8080", 8080])
def test_bad_web_listen_values_are_refused_by_the_settings(tmp_path: Path, value: object) -> None:
    """WEB_LISTEN must be host:port; the error names the key and shows the expected form."""
    path = write_settings(tmp_path / "s.yaml", [{"PORT": "sim://A", "SENSORS_ID": "A"}],
                          WEB_LISTEN=value)
    with pytest.raises(SettingsError, match=r"WEB_LISTEN: expected host:port like"):
        load_settings(path)
