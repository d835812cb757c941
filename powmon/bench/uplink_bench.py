"""Figure 8: what the uplink costs per reading at 8 sensors x 100 Hz, and its memory in a burst.

The uplink runs as the real process (`python -m powmon.uplink`, started by procs.Pipeline with
a broker and nothing else), fed by a paced synthetic publisher in a process of its own (this
module's `pace` worker): 8 sensors, one reading per message as a 100 Hz reader sends it, the
800 messages a second spread evenly over time as independent readers would send them (all
eight at once every 10 ms would let the uplink's ZeroMQ I/O thread wake once for eight, which
flatters it). The receiver is a small HTTP/1.1 server on a thread of this process that counts
requests, readings and TCP connections (tests/httpserver.RecordingServer is not part of the
installed package, and `powmon bench` must run from one).

- CPU s/1000 for `json` (batches of UPLINK_BATCH_SIZE) and `seed` (the original's protocol,
  one POST per reading): the uplink's CPU (/proc/<pid>/task/*/schedstat, every thread) between
  two of its heartbeats, over the readings its heartbeats say arrived in between (`received`),
  after a warm-up; the receiver must have got them all by the end.
- Peak RSS (VmHWM) through a burst: with the receiver down, 200,000 readings (20,000 with
  --quick) are published as fast as one process can (`workers synpub`); the uplink spools
  them; the receiver comes up and the uplink drains the spool to it (json). VmHWM is read
  after the spooling (the receive side) and after the drain (both).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import zmq

from powmon.bench.procs import BusWatch, Pipeline, wait_for
from powmon.bench.receiver import Ingest
from powmon.bench.results import Figure, cpu_seconds, peak_rss_mb
from powmon.bench.runner import Plan, result, worker
from powmon.common.schema.readings import Reading, encode_batch, encode_reading
from powmon.common.schema.status import Status
from powmon.common.settings import load_settings
from powmon.common.transport import pub_socket, wait_for_broker

FIGURE: Final = "8"
SENSORS: Final = 8
RATE: Final = 100.0  # readings/s per sensor
CPU_TARGETS: Final = {"json": 0.03, "seed": 0.3}  # CPU s per 1,000 readings (issue 19)
RSS_TARGET_MB: Final = 64.0
BURST: Final = 200_000
QUICK_BURST: Final = 20_000
HEARTBEAT: Final = 0.5


# ---- the receiver ---------------------------------------------------------------------------


class Receiver(Ingest):
    """A 200-answering HTTP server that counts what it got; it can go down and come back on
    the same port. `json` bodies are counted by their `"ts_ns"` keys (no parsing), any other
    body (seed: one line) as one reading."""

    def __init__(self, fmt: str) -> None:
        super().__init__(self)
        self._json = fmt == "json"
        self.requests = 0
        self.readings = 0
        self.connections = 0
        self.largest = 0  # readings in the largest body
        self._lock = threading.Lock()

    def connected(self) -> None:
        with self._lock:
            self.connections += 1

    def take(self, body: bytes) -> int:
        n = body.count(b'"ts_ns"') if self._json else 1
        with self._lock:
            self.requests += 1
            self.readings += n
            self.largest = max(self.largest, n)
        return 200

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


# ---- the uplink under measurement -----------------------------------------------------------


def _pipeline(plan: Plan, name: str, fmt: str, url: str) -> Pipeline:
    sensors = [{"PORT": f"sim://P{i}", "SENSORS_ID": f"P{i}"} for i in range(SENSORS)]
    return Pipeline(plan.sub(name), sensors, REMOTE_SAVE=True, UPLINK_URL=url,
                    UPLINK_FORMAT=fmt, UPLINK_TIMEOUT=5.0, UPLINK_BACKOFF_MAX=0.5,
                    HEARTBEAT_INTERVAL=HEARTBEAT)


def publish_interval(pipe: Pipeline) -> float:
    """The readers' PUBLISH_INTERVAL in this pipeline's settings (0: a message per reading)."""
    sensors = load_settings(pipe.settings).sensors
    return float(getattr(sensors[0], "publish_interval", 0.0)) if sensors else 0.0


def _beat(watch: BusWatch, after: Status | None, timeout: float = 10.0) -> Status:
    """The uplink's next heartbeat after `after`."""
    found: Status = wait_for(
        lambda: (s := watch.get("uplink", "uplink")) is not None and s is not after and s,
        timeout, "the uplink's heartbeat",
    )
    return found


def _counter(status: Status, name: str) -> int:
    value = status.counters.get(name, 0)
    return int(value) if isinstance(value, (int, float)) else 0


def _pacer(endpoint: str, seconds: float, interval: float) -> subprocess.Popen[str]:
    """This module's `pace` worker in a process of its own; its JSON comes with result()."""
    return subprocess.Popen(
        [sys.executable, "-m", "powmon.bench.uplink_bench", "pace", "--endpoint", endpoint,
         "--sensors", str(SENSORS), "--rate", str(RATE), "--seconds", str(seconds),
         "--interval", str(interval)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def cost(plan: Plan, fmt: str) -> Figure:
    """CPU s per 1,000 readings of the uplink at 8 x 100 Hz, sending `fmt` to a receiver."""
    warmup, seconds = (1.5, 2.0) if plan.quick else (3.0, 8.0)
    with Receiver(fmt) as recv:
        recv.up()
        pipe = _pipeline(plan, f"uplink-{fmt}", fmt, recv.url)
        with pipe, BusWatch(pipe.backend, readings=False) as watch:
            pipe.broker()
            uplink = pipe.uplink()
            _beat(watch, None, 30)
            interval = publish_interval(pipe)
            pub = _pacer(pipe.frontend, warmup + seconds + 1.0, interval)
            time.sleep(warmup)
            first = _beat(watch, watch.get("uplink", "uplink"))
            cpu0, t0 = cpu_seconds(uplink.pid), time.monotonic()
            time.sleep(seconds)
            last = _beat(watch, watch.get("uplink", "uplink"))
            cpu1, t1 = cpu_seconds(uplink.pid), time.monotonic()
            published = result(pub, timeout=60)["sent"]
            wait_for(lambda: recv.readings >= published, 60, f"the receiver to get {published}")
            rss = peak_rss_mb(uplink.pid)
    arrived = _counter(last, "received") - _counter(first, "received")
    per = (cpu1 - cpu0) / max(arrived, 1) * 1000
    target = CPU_TARGETS[fmt]
    return Figure(FIGURE, f"uplink CPU at 8 x 100 Hz, {fmt}", "CPU s/1000", per, target, "target",
               f"<= {target}", per <= target,
               note=f"{arrived} readings in {t1 - t0:.1f} s, a message per sensor every "
                    f"{max(interval, 1 / RATE) * 1000:.0f} ms; {recv.requests} requests over "
                    f"{recv.connections} connections, largest {recv.largest}; "
                    f"peak RSS {rss:.1f} MiB")


def burst(plan: Plan, fmt: str = "json") -> list[Figure]:
    """Peak RSS while the uplink spools a burst with the receiver down, then drains it."""
    count = QUICK_BURST if plan.quick else BURST
    with Receiver(fmt) as recv:
        recv.reserve()
        pipe = _pipeline(plan, f"uplink-burst-{fmt}", fmt, recv.url)
        with pipe, BusWatch(pipe.backend, readings=False) as watch:
            pipe.broker()
            uplink = pipe.uplink()
            _beat(watch, None, 30)
            start = time.monotonic()
            pub = worker("synpub", "--endpoint", pipe.frontend, "--sensor", "B0",
                         "--count", str(count), "--hwm", str(count + 1000))
            result(pub, timeout=300)
            wait_for(lambda: _counter(_beat(watch, watch.get("uplink", "uplink")),
                                      "received") >= count, 300, f"{count} readings spooled")
            spooled = time.monotonic() - start
            receive_rss = peak_rss_mb(uplink.pid)
            recv.up()
            wait_for(lambda: recv.readings >= count, 600, f"{count} readings delivered")
            drained = time.monotonic() - start - spooled
            rss = peak_rss_mb(uplink.pid)
    name = f"{count // 1000}k-reading burst"
    return [
        Figure(FIGURE, f"uplink peak RSS, {name}", "MiB", rss, RSS_TARGET_MB, "target",
            f"<= {RSS_TARGET_MB:.0f} MiB", rss <= RSS_TARGET_MB,
            note=f"{fmt}: spooled in {spooled:.1f} s, drained in {drained:.1f} s "
                 f"({recv.requests} requests, largest {recv.largest})"),
        Figure(FIGURE, f"  ... while spooling, {name}", "MiB", receive_rss,
            note="VmHWM with the receiver down, every reading spooled"),
    ]


def run(plan: Plan) -> list[Figure]:
    return [cost(plan, "json"), cost(plan, "seed"), *burst(plan)]


# ---- the paced publisher (a worker process: python -m powmon.bench.uplink_bench pace) -------


def pace(endpoint: str, sensors: int, rate: float, seconds: float,
         interval: float) -> dict[str, Any]:
    """`sensors` synthetic readers at `rate` readings/s each for `seconds`, publishing as a
    reader does with PUBLISH_INTERVAL `interval`: every `interval` one message holding the
    readings taken since (a batch, or one reading per message when that is one), the sensors'
    messages spread evenly in time as independent readers' would be."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = pub_socket(ctx, endpoint, 100_000, curve=None)  # the benchmark's loopback bus
    wait_for_broker(sock, threading.Event(), 5.0)
    stamp = f"{time.time_ns() & 0xFFFFFFFF:08x}"
    ids = [(f"P{i}", f"{stamp}{i:04x}") for i in range(sensors)]
    send, more = sock.send, zmq.SNDMORE
    per = max(1, round(rate * interval))  # readings per message
    step = per / rate / sensors  # seconds between two messages of any sensor
    messages = int(seconds * rate / per) * sensors
    start = time.monotonic()
    for n in range(messages):
        delay = start + n * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sensor, session = ids[n % sensors]
        seq = n // sensors * per
        now = time.time_ns()
        if per == 1:
            frames = encode_reading(Reading(sensor, session, seq, now, 512.0, 0.00488, 0.0740,
                                            0.370, 0))
        else:
            period_ns = int(1e9 / rate)
            frames = encode_batch(sensor, session, seq, [
                (now - (per - 1 - i) * period_ns, 512.0, 0.00488, 0.0740, 0.370, 0)
                for i in range(per)
            ])
        send(frames[0], more)
        send(frames[1])
    sock.close(linger=10_000)
    ctx.term()
    return {"sent": messages * per, "messages": messages}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m powmon.bench.uplink_bench")
    sub = p.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("pace")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--sensors", type=int, default=SENSORS)
    s.add_argument("--rate", type=float, default=RATE)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--interval", type=float, default=0.0, help="PUBLISH_INTERVAL (s)")
    a = p.parse_args(argv)
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "pace": lambda: pace(a.endpoint, a.sensors, a.rate, a.seconds, a.interval),
    }
    print(json.dumps(jobs[a.kind]()), flush=True)


if __name__ == "__main__":
    main()
