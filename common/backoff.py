"""Capped exponential backoff with jitter, as an iterator, so retries are loops, never recursion."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff(
    initial: float = 0.1,
    cap: float = 30.0,
    factor: float = 2.0,
    jitter: float = 0.1,
    attempts: int | None = None,
) -> Iterator[float]:
    """Yield successive delays: initial, initial*factor, ... capped at `cap`.

    Jitter (a fraction of each delay, added at random) keeps a fleet of processes that failed
    together from retrying in lockstep. With `attempts`, the iterator ends after that many delays,
    which is how a bounded retry loop learns it is exhausted.
    """
    if initial <= 0 or cap <= 0 or factor < 1 or jitter < 0:
        raise ValueError(
            f"backoff needs initial>0, cap>0, factor>=1, jitter>=0; "
            f"got {initial=}, {cap=}, {factor=}, {jitter=}"
        )
    delay = initial
    count = 0
    while attempts is None or count < attempts:
        yield min(cap, delay) * (1.0 + random.uniform(0.0, jitter))
        delay = min(cap, delay * factor)
        count += 1
