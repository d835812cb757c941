"""Stream mode: the board samples on its own timer and sends frames; the reader publishes them.

After the handshake the reader sends `stream HZ` and from then on only listens: each wake-up
takes whatever the port holds (one read), the frame decoder (frames.py) turns it into samples
with the device's numbers and times, the device clock (clock.py) maps those times to UTC, and
the emitter publishes what the wake-up brought as one message (a batch when several; at 100 Hz
that is one reading, published as soon as its frame is in). A hole in the device's numbers
(lost or damaged frames) is a loss named to the sinks (`device_dropped`), not a gap in the
bus seq: those samples never became readings. A corrupt frame is counted and skipped.

The device resetting shows as boot chatter, an `ok stop` nobody asked for, or silence: the
reader then handshakes again on the same port and starts a new stream, in the same reader
session (seq goes on; the samples lost in the reset were never numbered by anyone, so they are
counted in `resets` and show as a gap in time). If the handshake fails, the device is lost and
the port is reopened, as in request/answer mode.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import time
from collections.abc import Sequence
from typing import Final

import serial

from powmon.common.errors import DeviceError
from powmon.common.schema.readings import Flag
from powmon.readers.context import Context
from powmon.readers.conversion import convert_rms
from powmon.readers.emitter import Batch
from powmon.readers.frames import FrameDecoder, Hole, Sample, StreamParams, is_answer
from powmon.readers.handshake import Agreed, NoAnswer, handshake
from powmon.readers.link import read_available
from powmon.readers.stream_commands import StreamRefused, start_stream, stop_stream

log = logging.getLogger(__name__)

ADC_US: Final = 115  # one conversion and its interrupt on an Uno (docs/firmware.md, "ADC")
BITS_PER_BYTE: Final = 10  # 8N1
SILENCE_FRAMES: Final = 3  # frame periods without a byte (and at least TIMEOUT): stream gone
STOP_TIMEOUT: Final = 0.5  # longest wait for `ok stop` when the reader stops
IDLE_STEP: Final = 0.2  # longest wait for bytes: a stop is seen at least this often
READ_MAX: Final = 65536
TTY_SAFE_BYTES: Final = 2048  # half of Linux's 4 KiB tty input buffer: take before it fills
MAX_ASK: Final = 65535  # `stream` at this rate when any will do: the device answers its limit


class Resync(DeviceError):
    """The stream ended on the device's side (reset, stopped, silent): start it again."""


class NoStream(DeviceError):
    """The device refused `stream` without naming a limit: it cannot stream after all."""


def delay_ns(
    params: StreamParams, agreed: Agreed, wanted_avg: int, ac_window: float, baud: int
) -> int:
    """The known, constant part of a frame's delay (DeviceClock.delay_ns): its last sample is
    done one acquisition after its tick (AVG conversions, or the whole AC window), then the
    frame crosses the wire."""
    if agreed.convert is convert_rms:
        acquire_us = ac_window * 1e6
    else:
        acquire_us = ADC_US * (wanted_avg if agreed.flags & Flag.AVERAGED else 1)
    wire_ns = params.frame_len * BITS_PER_BYTE * 1e9 / baud
    return int(acquire_us * 1000 + wire_ns)


class Streamer:
    """One connected device in stream mode, through any number of stream restarts."""

    def __init__(self, ctx: Context, agreed: Agreed) -> None:
        self.ctx = ctx
        self.link = link = ctx.link
        self.agreed = agreed
        self.clock = ctx.board.clock
        self.decoder = FrameDecoder()
        self.params: StreamParams | None = None
        self._dropped = 0  # device samples lost that no published message has named yet
        self._lines = 0  # text lines the decoder has seen and this loop has looked at
        self._corrupt_base = ctx.counters.frames_corrupt
        # A POSIX serial port (link.port_fd): wait on its descriptor and the replay socket's
        # in one poll(2) (zmq_poll makes two system calls per wait), and read what the driver
        # holds in one os.read (pyserial's read would select again). Other ports read through
        # pyserial.
        self._fd = link.fd
        replay_fd = ctx.sleeper.replay_fd
        self._poller: select.poll | None = None  # the port and the replay socket
        self._hup: select.poll | None = None  # the port alone: readable, nothing read: hang-up
        if self._fd is not None:  # (no select.poll on Windows, where there is no descriptor)
            self._hup = select.poll()
            self._hup.register(self._fd, select.POLLIN)
            self._poller = select.poll()
            self._poller.register(self._fd, select.POLLIN)
            if replay_fd is not None:
                self._poller.register(replay_fd, select.POLLIN)

    # -- the outer loop: start, stream, restart ---------------------------------------------
    def run(self) -> None:
        """Stream until stopped (then stop the stream and publish its last samples); raises
        DeviceLost-like errors for the reader to reconnect."""
        stop = self.ctx.stop
        try:
            while not stop.is_set():
                try:
                    self._start()  # the bytes after the ack may already end the stream
                    self._loop()
                except Resync as why:
                    self._restart(str(why))
                    continue
                self._finish()
                return
        finally:
            self._name_dropped()
            self._sync_counters()

    def _ask(self) -> tuple[StreamParams, bytes]:
        """`stream HZ` at the rate wanted, or at the device's limit when it names one."""
        ctx = self.ctx
        cfg, board = ctx.settings, ctx.board
        hz = board.stream_hz
        if hz is None:  # 0: as fast as the device goes; None (STREAM on, a long period): 1 Hz
            hz = 1 if cfg.stream_rate is None else cfg.stream_rate
        asked = hz or MAX_ASK
        timeout = cfg.wanted.timeout
        try:
            params, rest = start_stream(self.link, asked, cfg.channel, timeout)
        except StreamRefused as refused:
            limit = refused.max_hz
            if limit is None or limit >= asked:
                raise NoStream(str(refused)) from None
            ctx.limiter.log(
                logging.WARNING if hz else logging.INFO, "stream-limit",
                "sensor=%s %s; streaming at %d Hz", cfg.wanted.sensor_id, refused, limit,
            )
            board.stream_hz = limit
            params, rest = start_stream(self.link, limit, cfg.channel, timeout)
        ctx.counters.stream_hz = params.hz
        return params, rest

    def _start(self) -> None:
        decoder = self.decoder
        params, rest = self._ask()
        decoder.take_rest()  # whatever the decoder held is from before this stream
        decoder.start(params)
        self.params = params
        cfg = self.ctx.settings
        wanted = cfg.wanted
        window = wanted.ac_cycles / wanted.mains_hz
        self.clock.delay_ns = delay_ns(params, self.agreed, wanted.avg, window, cfg.baudrate)
        self._feed(rest, time.time_ns())

    def _restart(self, why: str) -> None:
        """The device ended the stream: handshake again and go on (same session)."""
        ctx = self.ctx
        c, wanted = ctx.counters, ctx.settings.wanted
        c.resets += 1
        self._name_dropped()
        ctx.limiter.warn(
            "resync", "sensor=%s stream ended (%s); restarting it (resets=%d)",
            wanted.sensor_id, why, c.resets,
        )
        try:
            agreed = handshake(self.link, wanted, ctx.stop)
        except NoAnswer as err:
            raise DeviceError(f"no answer after the stream ended: {err}") from err
        if agreed is None:
            return  # stopped meanwhile
        if not agreed.streams:
            raise DeviceError(f"the device no longer streams (id {agreed.firmware!r})")
        self.agreed = agreed

    def _finish(self) -> None:
        """Stopped: end the stream and publish the samples that were still on their way."""
        samples: list[Sample] = []
        with contextlib.suppress(serial.SerialException, OSError):
            samples, _ = stop_stream(self.link, self.decoder, STOP_TIMEOUT)
        self._publish(samples, self.decoder.take_holes(), time.time_ns())

    # -- the hot loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        ctx, decoder = self.ctx, self.decoder
        params = self.params
        assert params is not None  # noqa: S101 -- set by _start
        stop, emitter, chores, sleep = ctx.stop, ctx.emitter, ctx.chores, ctx.sleeper.sleep
        chores_every = ctx.settings.heartbeat_interval
        frame_s = params.per_frame * params.period_us / 1e6
        silence = max(ctx.settings.wanted.timeout, SILENCE_FRAMES * frame_s)
        every = self._take_every(params)
        read = self._read_fd if self._fd is not None else self._read_port
        if every:
            read = self._take_fd
        next_chores = next_take = 0.0
        last_data = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_chores:
                next_chores = now + chores_every
                self._sync_counters()
                chores(now)
            if every:  # sleep to the next take; the port's driver holds the frames meanwhile
                if now < next_take:  # on the replay socket and the stop request only
                    sleep(min(next_take, next_chores) - now)
                    continue
                next_take = now + every
            data = read(min(next_chores - now, IDLE_STEP))
            if data:
                self._feed(data, time.time_ns())
                last_data = time.monotonic()
                if every:
                    emitter.flush()  # the takes are the publish cadence
            elif time.monotonic() - last_data > silence:
                self._publish(decoder.flush(), decoder.take_holes(), time.time_ns())
                raise Resync(f"no byte for {silence:.1f}s")
            emitter.flush_due(time.monotonic())

    def _take_every(self, params: StreamParams) -> float:
        """How often to take what the port holds: every PUBLISH_INTERVAL, so a wake-up brings
        a whole interval of frames (at 100 Hz ten of them), or sooner when the driver's input
        buffer would be half full by then; 0 (a wake-up per frame, as they come) without a
        descriptor to sleep beside or with no interval."""
        interval = self.ctx.emitter.interval
        if self._fd is None or not interval:
            return 0.0
        bytes_per_s = params.frame_len * params.hz / max(params.per_frame, 1)
        return min(interval, TTY_SAFE_BYTES / max(bytes_per_s, 1.0))

    def _take_fd(self, wait: float) -> bytes:
        """Everything the driver holds now (the descriptor is non-blocking: pyserial opens
        POSIX ports O_NONBLOCK); b"" when nothing came."""
        assert self._fd is not None and self._hup is not None  # noqa: S101 -- chosen only with a descriptor
        chunks = []
        while True:
            data = read_available(self._fd, READ_MAX)
            chunks.append(data)
            if len(data) < READ_MAX:
                break
        if not chunks[0] and self._hup.poll(0):  # readable, yet nothing: pyserial's rule
            raise serial.SerialException(
                "device reports readiness to read but returned no data (device disconnected "
                "or multiple access on port?)")
        return b"".join(chunks)

    def _read_fd(self, wait: float) -> bytes:
        """Wait for bytes (or a replay request) up to `wait` s; what the driver holds.

        The replay socket's descriptor is ZeroMQ's edge-triggered signal: when it wakes the
        poll, ZMQ_EVENTS says whether a request is there (and rearms it); serve() takes every
        request queued, so none is left behind unsignalled.
        """
        fd, poller = self._fd, self._poller
        assert poller is not None  # noqa: S101 -- read_fd is chosen only with a poller
        data = b""
        for item, _ in poller.poll(max(1, math.ceil(wait * 1000))):
            if item == fd:
                data = os.read(item, READ_MAX)
                if not data:
                    raise serial.SerialException("the port reports data but returned none")
            else:
                self.ctx.sleeper.serve()  # the replay socket woke the poll
        return data

    def _read_port(self, wait: float) -> bytes:
        """A port without a descriptor (sim://, socket://): block in its read (its timeout is
        at most READ_SLICE), looking for replay requests at each wake-up (ZMQ_EVENTS)."""
        self.ctx.sleeper.serve()
        port = self.link.port
        data = port.read(port.in_waiting or 1)
        if data:
            more = port.in_waiting
            if more:
                data += port.read(more)
        return data

    def _feed(self, data: bytes, host_ns: int) -> None:
        """Decode what one read brought, publish it, and see whether the stream ended."""
        decoder = self.decoder
        samples = decoder.feed(data)
        holes = decoder.take_holes()
        if samples or holes:
            self._publish(samples, holes, host_ns)
        if decoder.counters.lines != self._lines:
            self._lines = decoder.counters.lines
            self._check_lines(decoder.take_lines())
        if decoder.held:
            raise Resync("the device sent 'ok stop'")

    def _check_lines(self, lines: list[bytes]) -> None:
        """Text while streaming: nothing was asked, so it is boot chatter (a reset)."""
        for line in lines:
            if not is_answer(line):
                raise Resync(f"the device said {line[:40]!r}")

    def _publish(self, samples: Sequence[Sample], holes: list[Hole], host_ns: int) -> None:
        """Map device times to UTC and publish; each hole goes with the sample after it."""
        publish = self.ctx.emitter.publish
        convert = self.agreed.convert
        stamps = self.clock.stamp([s.device_us for s in samples], host_ns) if samples else []
        if holes:
            self._count(holes)
        if not holes and not self._dropped:
            publish(Batch(samples, stamps, convert))
            return
        before: dict[tuple[int, int], int] = {}
        for h in holes:
            key = (h.stream, h.last + 1)
            before[key] = before.get(key, 0) + h.last - h.first + 1
        start, dropped = 0, self._dropped
        for i, s in enumerate(samples):
            lost = before.pop((s.stream, s.seq), 0)
            if lost:
                if i > start:
                    publish(Batch(samples[start:i], stamps[start:i], convert, dropped))
                    dropped = 0
                start = i
                dropped += lost
        if start < len(samples):
            publish(Batch(samples[start:], stamps[start:], convert, dropped))
            dropped = 0
        self._dropped = dropped + sum(before.values())  # holes after the last sample: later

    def _count(self, holes: list[Hole]) -> None:
        c = self.ctx.counters
        c.device_holes += len(holes)
        c.device_lost += sum(h.last - h.first + 1 for h in holes)

    def _name_dropped(self) -> None:
        """Holes no sample followed (the end of a stream): named in a message of their own."""
        if self._dropped:
            self.ctx.emitter.publish(Batch((), (), self.agreed.convert, self._dropped))
            self._dropped = 0

    def _sync_counters(self) -> None:
        self.ctx.counters.frames_corrupt = self._corrupt_base + self.decoder.counters.corrupt
