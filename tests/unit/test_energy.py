"""EnergyMeter: trapezoid energy between neighbours, holes as missing coverage, any order."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powmon.base.energy import (
    BRIDGE_FLOOR_S,
    LEARN_INTERVALS,
    EnergyMeter,
    bridge_limit,
)
from powmon.base.segments import trapezoid_wh
from powmon.common.schema.readings import Reading

S = 1_000_000_000  # ns per second


def feed(meter: EnergyMeter, readings: list[tuple[int, int, float]], session: str = "s1") -> None:
    for seq, ts, watts in readings:
        meter.add("VIC", session, seq, ts, watts)


def steady(n: int, period_s: float = 0.1, watts: float = 10.0) -> list[tuple[int, int, float]]:
    return [(i, int(i * period_s * S), watts) for i in range(n)]


def test_constant_power_integrates_to_power_times_time() -> None:
    """10 W for 10 s of readings at 10 Hz is 10 * 10 / 3600 Wh, all of it covered."""
    meter = EnergyMeter({"VIC": 0.1})
    feed(meter, steady(101))
    t = meter.totals("VIC")
    assert t.energy_wh == pytest.approx(10 * 10 / 3600)
    assert t.covered_s == pytest.approx(10.0)
    assert t.missing_s == pytest.approx(0.0)
    assert t.readings == 101


def test_a_long_pause_is_missing_coverage_not_energy() -> None:
    """A 10 s silence between two readings of one session (an unplug) adds no energy."""
    meter = EnergyMeter({"VIC": 0.1})
    readings = steady(11) + [(11 + i, int((11 + i) * 0.1 * S) + 10 * S, 10.0) for i in range(10)]
    feed(meter, readings)
    t = meter.totals("VIC")
    assert t.covered_s == pytest.approx(1.0 + 0.9)
    assert t.missing_s == pytest.approx(10.1)
    assert t.energy_wh == pytest.approx(10 * 1.9 / 3600)


def test_a_hole_filled_later_gives_the_exact_energy() -> None:
    """Seqs 5..9 arriving after 10..20 (a replay) are integrated with both neighbours."""
    in_order, late = EnergyMeter({"VIC": 0.1}), EnergyMeter({"VIC": 0.1})
    readings = [(i, int(i * 0.1 * S), float(i)) for i in range(21)]
    feed(in_order, readings)
    feed(late, readings[:5] + readings[10:])
    assert late.totals("VIC").pending_s == pytest.approx(0.6)
    feed(late, readings[5:10])
    assert late.totals("VIC").energy_wh == pytest.approx(in_order.totals("VIC").energy_wh)
    assert late.totals("VIC").pending_s == 0.0


def test_a_hole_given_up_is_bridged_when_short_and_missing_when_long() -> None:
    """Seqs lost for good: neighbours 0.3 s apart are bridged; 1 s apart are not."""
    meter = EnergyMeter({"VIC": 0.1})  # bridge limit 0.5 s
    feed(meter, [(0, 0, 10.0), (3, int(0.3 * S), 10.0), (13, int(1.3 * S), 10.0)])
    meter.give_up("VIC", "s1", 1, 2)
    meter.give_up("VIC", "s1", 4, 12)
    t = meter.totals("VIC")
    assert t.covered_s == pytest.approx(0.3)
    assert t.missing_s == pytest.approx(1.0)


def test_duplicates_are_ignored_and_counted() -> None:
    """A reading stored twice (a replay of one already there) is counted once."""
    meter = EnergyMeter({"VIC": 0.1})
    feed(meter, steady(10))
    feed(meter, steady(10)[3:6])
    assert meter.totals("VIC").readings == 10
    assert meter.ignored == 3


def test_negative_power_is_returned_energy_and_energy_only_grows() -> None:
    """A line from +10 W to -10 W over 2 s: 1/720 Wh consumed, 1/720 Wh returned."""
    assert trapezoid_wh(0, 10.0, 2 * S, -10.0) == pytest.approx((1 / 720, 1 / 720))
    meter = EnergyMeter({"VIC": 1.0})
    feed(meter, [(0, 0, 10.0), (1, 2 * S, -10.0), (2, 4 * S, -10.0)])
    t = meter.totals("VIC")
    assert t.energy_wh == pytest.approx(1 / 720)
    assert t.returned_wh == pytest.approx(1 / 720 + 10 * 2 / 3600)


def test_sessions_are_never_bridged() -> None:
    """The time between two reader sessions (a restart) is missing coverage."""
    meter = EnergyMeter({"VIC": 0.1})
    feed(meter, steady(11), session="a")
    feed(meter, [(i, int((1.2 + i * 0.1) * S), 10.0) for i in range(11)], session="b")
    t = meter.totals("VIC")
    assert t.covered_s == pytest.approx(2.0)
    assert t.missing_s == pytest.approx(0.2)


def test_the_bridge_limit_is_learned_from_the_typical_interval() -> None:
    """With no POLLING_DELAY the limit is five typical intervals (never under the floor)."""
    assert bridge_limit(0.0) == BRIDGE_FLOOR_S
    assert bridge_limit(2.0) == 10.0
    meter = EnergyMeter()
    feed(meter, steady(LEARN_INTERVALS + 1, period_s=1.0))
    assert meter.totals("VIC").bridge_s == pytest.approx(5.0)
    feed(meter, [(LEARN_INTERVALS + 1, int((LEARN_INTERVALS + 4) * S), 10.0)])  # 4 s: bridged
    assert meter.totals("VIC").covered_s == pytest.approx(LEARN_INTERVALS + 4)


def test_a_meter_still_learning_decides_at_close() -> None:
    """Fewer readings than the learning needs are still integrated once the data ends."""
    meter = EnergyMeter()
    feed(meter, steady(5))
    assert meter.totals("VIC").readings == 0  # held back while learning
    meter.close()
    assert meter.totals("VIC").energy_wh == pytest.approx(10 * 0.4 / 3600)


def test_segments_are_reported_to_the_sink() -> None:
    """Every integrated pair reaches on_segment, for accounting by period."""
    seen: list[tuple[str, int, float, int, float]] = []
    meter = EnergyMeter({"VIC": 0.1}, on_segment=lambda *a: seen.append(a))
    feed(meter, steady(3))
    assert seen == [
        ("VIC", 0, 10.0, int(0.1 * S), 10.0),
        ("VIC", int(0.1 * S), 10.0, int(0.2 * S), 10.0),
    ]


def test_state_round_trips_through_json_and_continues() -> None:
    """A restart continues the totals, and an open hole is still filled exactly after it."""
    readings = [(i, int(i * 0.1 * S), float(i % 7)) for i in range(40)]
    reference = EnergyMeter({"VIC": 0.1})
    feed(reference, readings)
    first = EnergyMeter({"VIC": 0.1})
    feed(first, readings[:10] + readings[20:30])
    state = json.loads(json.dumps(first.to_state()))
    second = EnergyMeter.from_state(state, {"VIC": 0.1})
    feed(second, readings[10:20] + readings[30:])
    assert second.totals("VIC").energy_wh == pytest.approx(reference.totals("VIC").energy_wh)
    assert second.totals("VIC").readings == 40


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"version": 99}, "version"),
        ({"version": 1, "sensors": {"VIC": {"energy_wh": "x"}}}, "sensors.VIC.energy_wh"),
        ({"version": 1, "sensors": []}, "sensors: expected a mapping"),
    ],
)
def test_a_bad_state_is_refused_with_the_field_named(
    state: dict[str, object], message: str
) -> None:
    """A damaged state file says which field is wrong instead of failing later."""
    with pytest.raises(ValueError, match=message):
        EnergyMeter.from_state(state)


def test_open_holes_are_bounded() -> None:
    """Past max_holes the oldest hole is given up, so memory does not grow with the holes."""
    meter = EnergyMeter({"VIC": 0.1}, max_holes=4)
    feed(meter, [(2 * i, int(0.2 * i * S), 10.0) for i in range(20)])
    state = meter.to_state()
    assert len(state["sensors"]["VIC"]["streams"]["s1"]) == 5


def _reference(readings: list[tuple[int, int, float]], lost: set[int], limit: float) -> float:
    present = [r for r in sorted(readings) if r[0] not in lost]
    total = 0.0
    for (_, t0, w0), (_, t1, w1) in itertools.pairwise(present):
        if 0 <= (t1 - t0) / S <= limit:
            total += trapezoid_wh(t0, w0, t1, w1)[0]
    return total


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0.1, 0.1, 0.1, 0.3, 0.7, 2.0]), min_size=2, max_size=40),
    watts=st.lists(st.floats(0, 500), min_size=41, max_size=41),
    lost=st.sets(st.integers(0, 40)),
    seed=st.integers(0, 2**32),
)
def test_order_of_arrival_does_not_change_the_total(
    gaps: list[float], watts: list[float], lost: set[int], seed: int
) -> None:
    """Any arrival order, holes filled late or given up, gives the in-order trapezoid sum."""
    times = [0, *itertools.accumulate(int(g * S) for g in gaps)]
    readings = [(i, t, watts[i]) for i, t in enumerate(times)]
    lost &= set(range(len(readings)))
    arriving = [r for r in readings if r[0] not in lost]
    if not arriving:
        return
    random.Random(seed).shuffle(arriving)
    meter = EnergyMeter({"VIC": 0.1})
    for k, reading in enumerate(arriving):
        feed(meter, [reading])
        if k == len(arriving) // 2:
            for seq in sorted(lost):
                meter.give_up("VIC", "s1", seq, seq)
    meter.close()
    expected = _reference(readings, lost, bridge_limit(0.1))
    assert math.isclose(meter.totals("VIC").energy_wh, expected, rel_tol=1e-9, abs_tol=1e-12)


@given(st.lists(st.tuples(st.integers(1, 3), st.floats(-50, 500)), min_size=1, max_size=60),
       st.integers(1, 20))
def test_a_run_counted_in_one_pass_is_what_reading_by_reading_gives(
    steps: list[tuple[int, float]], cut: int
) -> None:
    """EnergyMeter.add_run (the writer's batches) against add() per reading: the same totals,
    whatever the spacing (holes beyond the bridge limit) and the sign of the power."""
    readings = []
    ts = 1_700_000_000 * 10**9
    for seq, (step, watts) in enumerate(steps):
        ts += step * 10**8
        readings.append(Reading("VIC", "s1", seq, ts, 512, 0.0, 0.0, watts))
    one, batched = EnergyMeter({"VIC": 0.1}), EnergyMeter({"VIC": 0.1})
    for r in readings:
        one.add(r.sensor_id, r.session, r.seq, r.ts_ns, r.watts)
    for start in range(0, len(readings), cut):
        batched.add_run("VIC", "s1", readings[start:start + cut])
    a, b = one.totals("VIC"), batched.totals("VIC")
    assert a.readings == b.readings and (a.first_ns, a.last_ns) == (b.first_ns, b.last_ns)
    assert a.energy_wh == pytest.approx(b.energy_wh, rel=1e-9, abs=1e-12)
    assert a.returned_wh == pytest.approx(b.returned_wh, rel=1e-9, abs=1e-12)
    assert a.covered_s == pytest.approx(b.covered_s, rel=1e-9, abs=1e-12)
