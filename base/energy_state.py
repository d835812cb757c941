"""Checking a saved energy state (base.energy) before a meter continues from it.

The state lives in a file a person can edit or a crash can cut short, so every field is
checked for its type and a bad one is named (`energy state: sensors.VIC.energy_wh: expected
a finite number, got 'x'`) instead of surfacing as a TypeError in the middle of the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_NUMBERS = ("energy_wh", "returned_wh", "covered_s")
_INTS = ("readings", "first_ns", "last_ns")
_RUN_TYPES = (int, int, int, int, float, int, int, float)


def _bad(where: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"energy state: {where}: expected {expected}, got {value!r:.60}")


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(where, "a finite number", value)
    return float(value)


def _int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, "an integer", value)
    return value


def _list(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(where, "a list", value)
    return value


def _run(where: str, value: Any) -> list[Any]:
    items = _list(where, value)
    if len(items) != len(_RUN_TYPES):
        raise _bad(where, f"{len(_RUN_TYPES)} fields", value)
    return [
        _int(f"{where}[{i}]", v) if t is int else _number(f"{where}[{i}]", v)
        for i, (t, v) in enumerate(zip(_RUN_TYPES, items, strict=True))
    ]


def _reading(where: str, value: Any) -> tuple[str, int, int, float]:
    items = _list(where, value)
    if len(items) != 4 or not isinstance(items[0], str):
        raise _bad(where, "[session, seq, ts_ns, watts]", value)
    return (items[0], _int(where, items[1]), _int(where, items[2]), _number(where, items[3]))


def _sensor(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(where, "a mapping", value)
    fields: dict[str, Any] = {}
    for name in _NUMBERS:
        fields[name] = _number(f"{where}.{name}", value.get(name))
    for name in _INTS:
        fields[name] = _int(f"{where}.{name}", value.get(name))
    bridge = value.get("bridge_s")
    fields["bridge_s"] = None if bridge is None else _number(f"{where}.bridge_s", bridge)
    fields["learning"] = [
        _reading(f"{where}.learning[{i}]", r)
        for i, r in enumerate(_list(f"{where}.learning", value.get("learning")))
    ]
    streams = value.get("streams")
    if not isinstance(streams, Mapping):
        raise _bad(f"{where}.streams", "a mapping", streams)
    fields["streams"] = {
        str(k): [_run(f"{where}.streams.{k}[{i}]", r) for i, r in enumerate(_list(where, runs))]
        for k, runs in streams.items()
    }
    return fields


def load_sensors(
    state: Mapping[str, Any], version: int
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]], int]:
    """(fields per sensor, retired (sensor, session) pairs, ignored count) of a saved state."""
    found = state.get("version") if isinstance(state, Mapping) else state
    if found != version:
        raise _bad("version", f"a state of version {version}", found)
    sensors = state.get("sensors")
    if not isinstance(sensors, Mapping):
        raise _bad("sensors", "a mapping", sensors)
    loaded = {str(sid): _sensor(f"sensors.{sid}", s) for sid, s in sensors.items()}
    retired = []
    for i, item in enumerate(_list("retired", state.get("retired", []))):
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)
        ):
            raise _bad(f"retired[{i}]", "[sensor_id, session]", item)
        retired.append((item[0], item[1]))
    return loaded, retired, _int("ignored", state.get("ignored", 0))
