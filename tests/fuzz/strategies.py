"""Shared Hypothesis settings and strategies for the fuzz tests.

In CI every fuzz test is derandomized and keeps no example database, so a run is repeatable
and writes nothing that a later run depends on. To explore instead, set
POWMON_FUZZ_EXAMPLES=N: each test then tries N random examples (e.g. 20000 overnight).
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1


def fuzz(max_examples: int) -> settings:
    """The budget of one fuzz test: small and deterministic unless exploring."""
    explore = int(os.environ.get("POWMON_FUZZ_EXAMPLES", "0"))
    return settings(
        max_examples=explore or max_examples,
        deadline=None,
        derandomize=not explore,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Text as hostile peers send it: NULs, control characters, any code point msgpack can carry
# (its strings are UTF-8, so no lone surrogates; invalid UTF-8 comes from raw bytes instead).
any_text = st.text(st.characters(codec="utf-8"), max_size=20)
ext_types = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16))

# Every value msgpack can carry, nested.
msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, UINT64_MAX)
    | st.floats()
    | any_text
    | st.binary(max_size=40)
    | ext_types
)
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    msgpack_scalars,
    lambda kids: st.lists(kids, max_size=11) | st.dictionaries(any_text, kids, max_size=6),
    max_leaves=8,
)
