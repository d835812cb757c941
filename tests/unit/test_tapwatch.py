"""What a tap says about silence (powmon.tap.listen), on real loopback sockets with a test clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from powmon.tap.listen import MIN_QUIET_S, Listening, quiet_after
from tests.helpers import free_endpoint, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def listening(zmq_ctx: zmq.Context[zmq.Socket[bytes]], clock: Clock) -> Iterator[Listening]:
    made = Listening(zmq_ctx, free_endpoint(), [b""], 1000, None, 3.0, clock=clock)
    yield made
    made.close()


def test_quiet_after_is_a_few_heartbeats_and_never_under_three_seconds() -> None:
    """2.5 heartbeat intervals of silence, but at least MIN_QUIET_S."""
    assert quiet_after(0.2) == MIN_QUIET_S
    assert quiet_after(10.0) == 25.0


def test_silence_is_said_once_per_spell(
    listening: Listening, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing before the quiet time; once when it has passed, not again while it lasts; again
    after something was heard and a new silence lasted as long."""
    clock.now += 2.9
    listening.check()
    assert capsys.readouterr().err == ""
    clock.now += 0.2
    listening.check()
    listening.check()
    err = capsys.readouterr().err
    assert err.count(f"nothing heard on {listening.endpoint} for 3 s") == 1, err
    assert "no broker answers there" in err and "`powmon run`" in err
    listening.heard()
    clock.now += 3.0
    listening.check()
    assert capsys.readouterr().err.count("nothing heard") == 1


def test_a_broker_that_answers_but_carries_nothing_is_told_apart(
    zmq_ctx: zmq.Context[zmq.Socket[bytes]], listening: Listening
) -> None:
    """Once the handshake with something bound on the endpoint succeeded, the silence is that
    of a broker with nobody publishing, not of a missing broker."""
    server = zmq_ctx.socket(zmq.XPUB)
    server.bind(listening.endpoint)

    def answered() -> bool:
        listening.check()
        return "the broker answers" in listening.silence()

    wait_until(answered, timeout=10, what="the handshake seen by the monitor")
    server.close(linger=0)
