"""Load generators and reference loops, each in a process: `python -m powmon.bench.workers`.

A reference has to run in a process of its own, like the PowMon process it is compared with,
or the benchmark would measure the GIL of the benchmark itself. Each worker prints one JSON
object on stdout when it is done.

- `serial`: a bare pyserial request/answer loop (`--depth 1`), or a pipelined one that keeps
  `--depth` requests in flight (the stretch goal of figure 1).
- `synpub`: a synthetic reader: encode_reading frames onto the broker as fast as it can.
- `rawpub` / `rawsub`: plain pyzmq PUB/SUB for the same message, the bus's ceiling.
- `latency`: a tap subscriber that records reading timestamp -> receipt latency.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

import msgpack
import serial
import zmq

from powmon.base.storage import csv_lines
from powmon.common.schema.envelope import BATCH_VERSION, READING_PREFIX, SCHEMA_VERSION
from powmon.common.schema.readings import (
    Reading,
    batch_frames,
    decode_batch,
    decode_readings,
    encode_batch,
    encode_reading,
    pack_row,
)
from powmon.common.transport import pub_socket, sub_socket, wait_for_broker
from powmon.readers.conversion import Calibration, convert

_ANSWER: Final = re.compile(rb"\s*\d{1,9}(?:\.\d{1,9})?\s*")
READ: Final = b"read \n"
BODY: Final[list[Any]] = [
    SCHEMA_VERSION, "S01", "0123456789ab", 0, 0, 512, 0.00488, 0.0740, 0.370, 0,
]


def _stop_on_term() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def serial_loop(port: str, baud: int, depth: int, seconds: float) -> dict[str, Any]:
    """Request/answer as fast as the link goes, `depth` requests in flight at any time."""
    stop = _stop_on_term()
    link = serial.Serial(port, baud, timeout=1.0)
    buf = bytearray()
    answers = bad = 0
    deadline = time.monotonic() + seconds
    link.write(READ)  # sync: the board sends boot chatter before its first answer
    while _ANSWER.fullmatch(link.read_until(b"\n")) is None:
        link.write(READ)
    link.write(READ * depth)
    inflight = depth
    while not stop.is_set() and time.monotonic() < deadline:
        chunk = link.read(link.in_waiting or 1)
        if not chunk:
            break  # a lost answer: the pipelined loop would need a drain here
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            inflight -= 1
            if _ANSWER.fullmatch(line):
                answers += 1
            else:
                bad += 1
        if inflight < depth:
            link.write(READ * (depth - inflight))
            inflight = depth
    link.close()
    return {"answers": answers, "bad": bad}


def synthetic_publisher(
    endpoint: str, sensor: str, count: int, hwm: int, batch: int = 1
) -> dict[str, Any]:
    """What a reader does per reading (Reading, encode_reading, send), minus the serial port;
    with `batch` > 1 what a streaming reader does per wake-up (rows, encode_batch, send)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = pub_socket(ctx, endpoint, hwm, curve=None)  # the benchmarks' loopback bus
    wait_for_broker(sock, threading.Event(), 5.0)
    session = f"{time.time_ns() & 0xFFFFFFFFFFFF:012x}"
    send, more = sock.send, zmq.SNDMORE
    start = time.time()
    if batch > 1:
        for seq in range(0, count, batch):
            now = time.time_ns()
            rows = [(now + i, 512, 0.00488, 0.0740, 0.370, 0) for i in range(batch)]
            topic, payload = encode_batch(sensor, session, seq, rows[: count - seq])
            send(topic, more)
            send(payload)
    else:
        for seq in range(count):
            topic, payload = encode_reading(Reading(sensor, session, seq, time.time_ns(), 512,
                                                    0.00488, 0.0740, 0.370, 0))
            send(topic, more)  # two send() calls, as readers.emitter.Emitter does
            send(payload)
    end = time.time()
    sock.close(linger=60_000)  # let everything queued reach the broker
    ctx.term()
    return {"start": start, "end": end, "sent": count}


def _body(batch: int) -> list[Any]:
    """The payload of the benchmark's message: one reading (v1), or a batch of `batch`."""
    if batch <= 1:
        return list(BODY)
    rows = [[BODY[4] + i, *BODY[5:]] for i in range(batch)]
    return [BATCH_VERSION, BODY[1], BODY[2], 0, 0, rows]


def raw_publisher(
    endpoint: str, count: int, pack: bool, hwm: int, batch: int = 1
) -> dict[str, Any]:
    """XPUB (binds; its first recv is the subscriber arriving), then `count` messages.

    Frames go out with two send() calls rather than send_multipart(): the same two-frame message
    on the wire, without pyzmq's per-call Python overhead (about 4 us against 1.8 us here), so
    this is the ceiling of the message format itself.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.bind(endpoint)
    sock.recv()  # the subscription: nothing sent from now on is lost to the slow joiner
    topic = READING_PREFIX + b"S01/"
    body = _body(batch)
    payload = msgpack.packb(body)
    send = sock.send
    more = zmq.SNDMORE
    start = time.time()
    if pack:
        packb = msgpack.packb
        for seq in range(count):
            body[3] = seq  # the seq of a single reading, the first seq of a batch
            send(topic, more)
            send(packb(body))
    else:
        for _ in range(count):
            send(topic, more)
            send(payload)
    end = time.time()
    sock.close(linger=60_000)
    ctx.term()
    return {"start": start, "end": end, "sent": count}


def raw_subscriber(endpoint: str, count: int, unpack: bool, hwm: int) -> dict[str, Any]:
    """Receive until `count` messages or 3 s of silence; time from the first to the last."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = sub_socket(ctx, endpoint, [READING_PREFIX], hwm, curve=None)
    recv = sock.recv
    unpackb = msgpack.unpackb
    got = 0
    first = last = 0.0
    noblock = zmq.NOBLOCK
    if sock.poll(30_000):
        first = time.time()
        while got < count:
            try:
                recv(noblock)  # the topic; the payload frame is already there with it
            except zmq.Again:
                if not sock.poll(3000):
                    break
                continue
            payload = recv()
            if unpack:
                unpackb(payload)
            got += 1
        last = time.time()
    sock.close(0)
    ctx.term()
    return {"received": got, "first": first, "last": last}


def latency_tap(endpoint: str, seconds: float, warmup: float) -> dict[str, Any]:
    """Reading timestamp -> decoded here, in ms, for every reading after `warmup`."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = sub_socket(ctx, endpoint, [READING_PREFIX], 1_000_000, curve=None)
    now_ns = time.time_ns
    lat: list[float] = []
    begin = time.monotonic() + warmup
    end = begin + seconds
    while time.monotonic() < end:
        if sock.poll(100):
            readings = decode_readings(sock.recv_multipart())
            if time.monotonic() >= begin:
                now = now_ns()
                lat += [(now - r.ts_ns) / 1e6 for r in readings]
    sock.close(0)
    ctx.term()
    return {"latencies_ms": lat}


def bare_wakes(period: float, seconds: float) -> dict[str, Any]:
    """The floor of a reader's cost: CPU of a loop that only wakes on a grid of `period`
    (poll(2) on nothing, as a reader sleeps between its takes), per wake-up."""
    poller = select.poll()
    wakes = 0
    start_cpu = time.thread_time()
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while True:
        next_at += period
        left = next_at - time.monotonic()
        if next_at > end:
            break
        if left > 0:
            poller.poll(max(1, int(left * 1000)))
        wakes += 1
    return {"wakes": wakes, "cpu_s": time.thread_time() - start_cpu}


def reference_loop(readings: int) -> dict[str, Any]:
    """A reading's Python work, end to end: the reader's conversion and pack_row, the
    batch payload, the sink's decode and the writer's CSV line; the same on any machine, to
    compare machines with (the Pi 4 line of figure 9)."""
    cal = Calibration()
    rows = []
    start = time.perf_counter()
    for seq in range(readings):
        volts, amps, watts, flags = convert(512 + seq % 7, cal, 0)
        rows.append(pack_row((1_700_000_000_000_000_000 + seq, 512, volts, amps, watts, flags)))
        if len(rows) == 10:
            frames = batch_frames("REF", "s1", seq - 9, rows)
            csv_lines(decode_batch(frames).readings)
            rows = []
    return {"readings": readings, "seconds": time.perf_counter() - start}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m powmon.bench.workers")
    sub = p.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("serial")
    s.add_argument("--port", required=True)
    s.add_argument("--baud", type=int, default=115200)
    s.add_argument("--depth", type=int, default=1)
    s.add_argument("--seconds", type=float, default=10.0)
    s = sub.add_parser("synpub")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--sensor", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--hwm", type=int, default=1_000_000)
    s.add_argument("--batch", type=int, default=1, help="readings per message")
    for name in ("rawpub", "rawsub"):
        s = sub.add_parser(name)
        s.add_argument("--endpoint", required=True)
        s.add_argument("--count", type=int, required=True, help="messages")
        s.add_argument("--codec", action="store_true", help="pack (pub) / unpack (sub) each")
        s.add_argument("--hwm", type=int, default=1_000_000)
        s.add_argument("--batch", type=int, default=1, help="readings per message")
    s = sub.add_parser("wakes")
    s.add_argument("--period", type=float, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s = sub.add_parser("refloop")
    s.add_argument("--readings", type=int, default=100_000)
    s = sub.add_parser("latency")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--warmup", type=float, default=0.5)
    return p


def main(argv: list[str] | None = None) -> None:
    a = _parser().parse_args(argv)
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "serial": lambda: serial_loop(a.port, a.baud, a.depth, a.seconds),
        "synpub": lambda: synthetic_publisher(a.endpoint, a.sensor, a.count, a.hwm, a.batch),
        "rawpub": lambda: raw_publisher(a.endpoint, a.count, a.codec, a.hwm, a.batch),
        "rawsub": lambda: raw_subscriber(a.endpoint, a.count, a.codec, a.hwm),
        "latency": lambda: latency_tap(a.endpoint, a.seconds, a.warmup),
        "wakes": lambda: bare_wakes(a.period, a.seconds),
        "refloop": lambda: reference_loop(a.readings),
    }
    print(json.dumps(jobs[a.kind]()), flush=True)


if __name__ == "__main__":
    main()
