"""The stream frame decoder against frames made by the simulated board's encoder (pure)."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powmon.common.schema.readings import Flag
from powmon.readers.frames import (
    FrameDecoder,
    Hole,
    Sample,
    StreamParams,
    parse_stop,
    parse_stream_ack,
)
from powmon.sim.device import Fault, SignalSpec, SimDevice
from powmon.sim.stream import FLAG_MEAN, FLAG_RMS, encode_frame

PARAMS = StreamParams(hz=1000, period_us=1000, per_frame=4)


def frames(
    first: int, count: int, per: int = 4, t0: int = 5_000, period: int = 1000, flags: int = 0
) -> list[bytes]:
    """`count` frames of `per` samples from sample `first`; sample k reads 500 + k % 500."""
    out = []
    for f in range(count):
        seq = first + f * per
        values = [(500 + (seq + k) % 500) * 64 for k in range(per)]
        out.append(encode_frame(seq, t0 + seq * period, values, flags))
    return out


def seqs(samples: list[Sample]) -> list[int]:
    return [s.seq for s in samples]


class Board:
    """A simulated board on a fake clock, streaming into a decoder."""

    def __init__(self, **spec: object) -> None:
        self.now = 50.0
        self.device = SimDevice(SignalSpec(**spec), "T", clock=lambda: self.now)  # type: ignore[arg-type]
        self.decoder = FrameDecoder()
        self.samples: list[Sample] = []

    def send(self, request: bytes) -> bytes:
        answer = self.device.feed(request)
        self.samples += self.decoder.feed(answer)
        return answer

    def run(self, seconds: float, step: float = 0.01) -> None:
        for _ in range(round(seconds / step)):
            self.now += step
            for _, data in self.device.poll():
                self.samples += self.decoder.feed(data)

    def expected(self) -> list[tuple[int, int, int, float]]:
        return [(s.stream, s.seq, s.device_us, s.raw) for s in self.device.streamed]

    def got(self) -> list[tuple[int, int, int, float]]:
        return [(s.stream, s.seq, s.device_us, s.raw) for s in self.samples]


def test_values_seq_and_times_are_what_the_board_sent() -> None:
    """Every sample decoded is one the board sent, none is missing, in order, times exact."""
    board = Board(amps=2.0, ac_hz=50.0, noise=0.05, seed=4)
    assert board.send(b"stream 1000\n") == b"ok stream 1000 1000 10\r\n"
    board.run(1.0)
    board.send(b"stop\n")
    assert board.got() == board.expected()
    assert seqs(board.samples) == list(range(len(board.samples)))
    assert len(board.samples) >= 990
    times = [s.device_us for s in board.samples]
    assert {b - a for a, b in pairwise(times)} == {1000}
    assert all(isinstance(s.raw, int) and s.flags == 0 for s in board.samples)
    c = board.decoder.counters
    assert (c.corrupt, c.skipped, c.holes, c.lost, c.resets, c.stops) == (0, 0, 0, 0, 0, 1)
    assert not board.decoder.active


@pytest.mark.parametrize("chunk", [1, 3, 7, 41, 4096])
def test_bytes_in_any_pieces_decode_the_same(chunk: int) -> None:
    """A read may end anywhere, even inside a frame or a line: the result does not change."""
    data = b"ok stream 1000 1000 4\r\n" + b"".join(frames(0, 20)) + b"ok stop 80\r\n"
    decoder = FrameDecoder()
    got: list[Sample] = []
    for i in range(0, len(data), chunk):
        got += decoder.feed(data[i : i + chunk])
    assert seqs(got) == list(range(80))
    assert [s.raw for s in got] == [500 + k for k in range(80)]
    assert decoder.take_lines() == [b"ok stream 1000 1000 4", b"ok stop 80"]
    assert decoder.counters.skipped == 0
    assert decoder.pending == 0


def test_means_and_rms_carry_their_flags_and_fractions() -> None:
    """Frame bit 7 is a mean (avg K), bit 6 an RMS (mode ac): the reading flags of the schema."""
    decoder = FrameDecoder(PARAMS)
    mean = encode_frame(0, 0, [34069, 34070], FLAG_MEAN)
    rms = encode_frame(2, 2000, [9268], FLAG_RMS)
    got = decoder.feed(mean + rms)
    assert [(s.raw, s.flags) for s in got] == [
        (34069 / 64, Flag.AVERAGED),
        (34070 / 64, Flag.AVERAGED),
        (9268 / 64, Flag.AC_RMS),
    ]


@pytest.mark.parametrize("position", range(1, 18))
def test_a_corrupted_byte_anywhere_is_one_corrupt_frame_and_a_hole(position: int) -> None:
    """One bit flipped anywhere after the sync byte: that frame is counted and skipped, its
    samples are a hole, the next frames decode."""
    stream = frames(0, 5)
    bad = bytearray(stream[2])
    bad[position] ^= 0x04
    decoder = FrameDecoder(PARAMS)
    got = decoder.feed(b"".join(stream[:2]) + bytes(bad) + b"".join(stream[3:]))
    assert seqs(got) == [*range(8), *range(12, 20)]
    assert decoder.counters.corrupt == 1
    assert decoder.take_holes() == [Hole(1, 8, 11)]
    assert decoder.counters.lost == 4


def test_consecutive_corrupt_frames_are_each_counted() -> None:
    """Three damaged frames in a row count three, and the hole spans all their samples."""
    stream = [bytearray(f) for f in frames(0, 6)]
    for f in stream[1:4]:
        f[9] ^= 0x80
    decoder = FrameDecoder(PARAMS)
    got = decoder.feed(b"".join(bytes(f) for f in stream))
    assert seqs(got) == [0, 1, 2, 3, 16, 17, 18, 19, 20, 21, 22, 23]
    assert decoder.counters.corrupt == 3
    assert decoder.take_holes() == [Hole(1, 4, 15)]


@pytest.mark.parametrize("lost", [[5], [1], [2, 3], [9, 10, 11]])
def test_dropped_bytes_are_a_corrupt_frame_then_a_resync(lost: list[int]) -> None:
    """A frame that lost bytes fails its check; the decoder finds the next frame by its sync."""
    stream = frames(0, 4)
    cut = bytes(b for i, b in enumerate(stream[1]) if i not in lost)
    decoder = FrameDecoder(PARAMS)
    got = decoder.feed(stream[0] + cut + stream[2] + stream[3])
    assert seqs(got) == [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15]
    c = decoder.counters
    assert (c.corrupt, c.resyncs, c.holes, c.lost) == (1, 1, 1, 4)
    assert c.skipped == len(cut)


def test_a_missing_frame_is_a_hole_and_nothing_else() -> None:
    """A frame that never came (a lost USB packet) is a hole, not a corrupt frame."""
    stream = frames(0, 4)
    decoder = FrameDecoder(PARAMS)
    got = decoder.feed(stream[0] + stream[2] + stream[3])
    assert seqs(got) == [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15]
    assert decoder.take_holes() == [Hole(1, 4, 7)]
    assert decoder.counters.corrupt == 0


def test_sequence_numbers_unwrap_past_16_bits() -> None:
    """Seq is 16 bits on the wire; the decoder's numbers go on past 65535 without a hole."""
    decoder = FrameDecoder(PARAMS)
    decoder.feed(b"".join(frames(0, 1)))
    got = decoder.feed(b"".join(frames(65528, 4)))
    assert seqs(got) == list(range(65528, 65544))
    assert decoder.take_holes() == [Hole(1, 4, 65527)]  # the samples in between never came


def test_a_hole_longer_than_the_seq_range_is_sized_by_the_device_clock() -> None:
    """100,000 samples lost: seq alone cannot tell, the device time can."""
    decoder = FrameDecoder(PARAMS)
    decoder.feed(b"".join(frames(0, 2)))
    got = decoder.feed(b"".join(frames(100_008, 2)))
    assert seqs(got)[0] == 100_008
    assert decoder.take_holes() == [Hole(1, 8, 100_007)]


def test_device_time_unwraps_past_32_bits() -> None:
    """micros() wraps every 71.6 minutes; device_us goes on, and the numbers stay whole."""
    t0 = (1 << 32) - 2500  # the first samples just before the wrap
    decoder = FrameDecoder(PARAMS)
    got = decoder.feed(b"".join(frames(0, 3, t0=t0)))
    assert [s.device_us for s in got] == [t0 + k * 1000 for k in range(12)]
    assert got[-1].device_us > 1 << 32
    assert seqs(got) == list(range(12))
    assert decoder.counters.resets == 0


def test_device_clock_going_back_is_a_reset_and_a_new_stream() -> None:
    """A board that reset and streams again: counted, its samples are a new stream from 0."""
    decoder = FrameDecoder(PARAMS)
    before = decoder.feed(b"".join(frames(0, 3, t0=9_000_000)))
    after = decoder.feed(b"".join(frames(0, 2, t0=1_000)))
    assert {s.stream for s in before} == {1}
    assert {s.stream for s in after} == {2}
    assert seqs(after) == list(range(8))
    assert after[0].device_us == 1_000
    assert decoder.counters.resets == 1


def test_an_acknowledged_stream_after_a_reset_is_one_new_stream() -> None:
    """Reset, then the host starts a stream (ack seen): one new stream, the reset counted."""
    decoder = FrameDecoder(PARAMS)
    decoder.feed(b"".join(frames(0, 3, t0=9_000_000)))
    got = decoder.feed(b"ok stream 1000 1000 4\r\n" + b"".join(frames(0, 2, t0=1_000)))
    assert {s.stream for s in got} == {2}
    assert (decoder.counters.resets, decoder.counters.streams) == (1, 2)


def test_numbers_that_start_again_without_an_answer_are_a_restart() -> None:
    """Seq back to 0 while the device clock went on: a new stream whose `ok stream` was lost."""
    decoder = FrameDecoder(PARAMS)
    decoder.feed(b"".join(frames(0, 3)))
    got = decoder.feed(b"".join(frames(0, 2, t0=900_000)))
    assert {s.stream for s in got} == {2}
    assert (decoder.counters.restarts, decoder.counters.resets) == (1, 0)


def test_text_lines_between_frames_are_kept_and_acted_on() -> None:
    """`ok stream` starts a stream, `ok stop N` ends it (its missing tail is a hole), other
    lines (boot chatter, err) are kept; none of their bytes count as junk."""
    decoder = FrameDecoder()
    data = (
        b"ok stream 1000 1000 4\r\n"
        + frames(0, 1)[0]
        + b"\x00\xffPowMon sim boot\r\nerr\r\n"
        + frames(4, 1)[0]
        + b"ok stop 11\r\n"
    )
    got = decoder.feed(data)
    assert seqs(got) == list(range(8))
    assert decoder.take_lines() == [
        b"ok stream 1000 1000 4",
        b"PowMon sim boot",
        b"err",
        b"ok stop 11",
    ]
    assert decoder.take_holes() == [Hole(1, 8, 10)]
    assert decoder.counters.skipped == 2  # the chatter's two binary bytes
    assert not decoder.active


def test_frames_outside_a_stream_are_orphans() -> None:
    """Before any `ok stream` the period is unknown: frames are counted, not guessed at."""
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(frames(0, 3))) == []
    assert decoder.counters.orphans == 3


def test_an_answer_after_a_cut_frame_is_still_found() -> None:
    """The last frame lost bytes and `ok stop` follows at once: the line is still seen."""
    stream = frames(0, 2)
    cut = stream[1][:6] + stream[1][9:]
    decoder = FrameDecoder(PARAMS)
    decoder.feed(stream[0] + cut + b"ok stop 8\r\n")
    assert decoder.counters.stops == 1
    assert decoder.take_holes() == [Hole(1, 4, 7)]


def test_flush_settles_a_frame_that_will_never_end() -> None:
    """An incomplete frame waits for its rest; flush() (the line went quiet) counts it."""
    stream = frames(0, 2)
    decoder = FrameDecoder(PARAMS)
    decoder.feed(stream[0] + stream[1][:7])
    assert decoder.pending == 7
    assert decoder.flush() == []
    assert decoder.pending == 0
    assert decoder.counters.corrupt == 1


def test_parse_answers() -> None:
    """The stream answers parse; junk before them (a frame's tail) is allowed, junk after not."""
    assert parse_stream_ack(b"ok stream 100 10000 1\r\n") == StreamParams(100, 10000, 1)
    assert parse_stream_ack(b"\x17\x99ok stream 5 200000 1") == StreamParams(5, 200000, 1)
    assert parse_stream_ack(b"ok stream 100 10000 17") is None
    assert parse_stream_ack(b"ok stream 100 10000 1 x") is None
    assert parse_stop(b"ok stop 930\r\n") == 930
    assert parse_stop(b"ok stop") is None


def test_sim_faults_are_all_counted_and_never_stored() -> None:
    """Against the simulated board: corrupt, dropped bytes and dropped frames leave holes of
    exactly their samples, and nothing decoded differs from what the board sent intact."""
    board = Board(amps=1.0, noise=0.2, seed=9)
    board.send(b"stream 2000\n")
    for fault in (Fault.CORRUPT, Fault.DROPBYTES, Fault.DROPFRAME, Fault.CORRUPT):
        board.run(0.1)
        board.device.inject(fault)
    board.run(0.1)
    board.send(b"stop\n")
    assert board.got() == board.expected()
    c = board.decoder.counters
    assert (c.corrupt, c.holes) == (3, 4)
    assert c.lost == 4 * 16  # 2000 Hz: 16 samples per frame
    assert c.samples + c.lost == int(board.decoder.take_lines()[-1].split()[-1])


@settings(max_examples=150, deadline=None)
@given(
    junk=st.lists(st.binary(max_size=40), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_junk_between_frames_never_invents_or_loses_samples(junk: list[bytes], seed: int) -> None:
    """Random bytes between whole frames: every frame's samples come out, nothing else."""
    rng = random.Random(seed)
    stream = frames(0, 12)
    gaps = rng.sample(range(13), len(junk))  # before frame i, or after the last (12)
    data = b""
    for i in range(13):
        if i in gaps:
            data += junk[gaps.index(i)]
        if i < 12:
            data += stream[i]
    decoder = FrameDecoder(PARAMS)
    got = decoder.feed(data) + decoder.flush()
    assert seqs(got) == list(range(48))
    assert [s.raw for s in got] == [500 + k for k in range(48)]


def test_ok_stop_after_a_frame_claiming_to_be_longer_is_still_seen() -> None:
    """The last frame's count byte was hit (it claims 16 samples, it has 4): the `ok stop`
    inside the span it claims is still an answer, not part of the broken frame."""
    stream = frames(0, 2)
    bad = bytearray(stream[1])
    bad[1] = 16
    decoder = FrameDecoder(PARAMS)
    decoder.feed(stream[0] + bytes(bad) + b"ok stop 8\r\n")
    assert (decoder.counters.stops, decoder.counters.corrupt) == (1, 1)
    assert decoder.take_holes() == [Hole(1, 4, 7)]


def test_what_follows_ok_stop_is_handed_back() -> None:
    """After `ok stop` come answers to the host's requests: held, whole, for take_rest()."""
    decoder = FrameDecoder(PARAMS)
    got = decoder.feed(b"".join(frames(0, 2)) + b"ok stop 8\r\n53")
    assert seqs(got) == list(range(8))
    assert decoder.held
    assert decoder.feed(b"2\r\n") == []
    assert decoder.take_rest() == b"532\r\n"
    assert not decoder.held


def test_a_new_stream_right_after_ok_stop_goes_on() -> None:
    """`stream` while streaming: `ok stop`, then `ok stream` and new frames, all decoded."""
    decoder = FrameDecoder(PARAMS)
    data = b"".join(frames(0, 2)) + b"ok stop 8\r\nok stream 500 2000 2\r\n"
    got = decoder.feed(data + b"".join(frames(0, 3, per=2, t0=90_000, period=2000)))
    assert [(s.stream, s.seq) for s in got] == [(1, k) for k in range(8)] + [
        (2, k) for k in range(6)
    ]
    assert not decoder.held and decoder.active
