"""Text options (sim:// query strings, `powmon sim` sensor specs) to typed simulator settings.

Both front ends share one table so that `sim://VIC?amps=2&ac=50` and `powmon sim
VIC:amps=2,ac=50` mean the same thing and fail with the same message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from powmon.sim.device import Fault, SignalSpec
from powmon.sim.signal import VERSION

Parser = Callable[[str], Any]


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _nonneg(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _ac(text: str) -> float | None:
    """`ac=0` (or `ac=dc`) keeps the sensor on DC, which reads better in scripts than omitting."""
    return None if text in {"0", "dc"} else _positive(text)


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _micros(text: str) -> int:
    value = int(text)
    if not 0 <= value < 1 << 32:
        raise ValueError("must be 0..4294967295 (a 32-bit micros())")
    return value


def _drift(text: str) -> float:
    value = _float(text)
    if abs(value) > 50_000:
        raise ValueError("must be within +-50000 ppm")
    return value


FIRMWARES: Final = (VERSION, "1.0.0", "none")


def _firmware(text: str) -> str:
    if text not in FIRMWARES:
        raise ValueError(f"expected one of {', '.join(FIRMWARES)}")
    return text


def _flag(text: str) -> bool:
    if text not in {"0", "1"}:
        raise ValueError("expected 0 or 1")
    return text == "1"


# option name -> (SignalSpec field, parser)
SIGNAL_OPTIONS: Final[dict[str, tuple[str, Parser]]] = {
    "amps": ("amps", _float),
    "ac": ("ac_hz", _ac),
    "noise": ("noise", _nonneg),
    "seed": ("seed", int),
    "boot": ("boot_chatter", _flag),
    "offset": ("offset_v", _float),
    "sns": ("sns", _positive),
    "vref": ("vref", _positive),
    "drift": ("drift_ppm", _drift),
    "micros0": ("micros0", _micros),
    "adc_rate": ("adc_rate", _count),
    "firmware": ("firmware", _firmware),
}

# option name -> the fault it repeats, for `<name>_every=N` (read faults count read answers,
# frame faults count stream frames, reset both)
FAULT_OPTIONS: Final[dict[str, Fault]] = {f"{f.value}_every": f for f in Fault}

# URL-only options: pacing, the simulated unplug and periodic faults
PORT_OPTIONS: Final[dict[str, Parser]] = {
    "baud": _count,
    "pace": _flag,
    "disconnect_after": _count,
    **dict.fromkeys(FAULT_OPTIONS, _count),
}


def parse_options(
    where: str, options: Mapping[str, str], extra: Mapping[str, Parser] | None = None
) -> tuple[SignalSpec, dict[str, Any]]:
    """Split options into a SignalSpec and the parsed `extra` ones; ValueError names the culprit.

    Unknown names are all listed at once, with the known ones, so a typo is fixed in one go.
    """
    extra = extra or {}
    unknown = sorted(set(options) - set(SIGNAL_OPTIONS) - set(extra))
    if unknown:
        known = ", ".join(sorted([*SIGNAL_OPTIONS, *extra]))
        raise ValueError(
            f"{where}: unknown parameter(s) {', '.join(map(repr, unknown))}; known: {known}"
        )
    fields: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for name, text in options.items():
        parser = SIGNAL_OPTIONS[name][1] if name in SIGNAL_OPTIONS else extra[name]
        try:
            value = parser(text.strip())
        except ValueError as err:
            raise ValueError(f"{where}: parameter {name}={text!r}: {err}") from None
        if name in SIGNAL_OPTIONS:
            fields[SIGNAL_OPTIONS[name][0]] = value
        else:
            rest[name] = value
    return SignalSpec(**fields), rest
