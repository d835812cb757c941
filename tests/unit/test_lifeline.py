"""The lifeline over real loopback sockets: beats arrive, strangers are refused, and a child
stops (after its grace) when the supervisor's end goes away."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from powmon.common import lifeline
from powmon.common.lifeline import Beat, Lifeline, LifelineServer
from tests.helpers import wait_until


@pytest.fixture
def server() -> Iterator[LifelineServer]:
    srv = LifelineServer()
    yield srv
    srv.close()


def collect(server: LifelineServer, into: list[Beat], count: int) -> bool:
    into += server.read()
    return len(into) >= count


def test_a_child_reports_beats_with_a_readers_session_and_seq(server: LifelineServer) -> None:
    """`beat` lines reach the supervisor tagged with the child's token."""
    env, token = server.issue()
    stop = threading.Event()
    line = lifeline.attach(stop, {lifeline.ENV: env})
    assert line is not None
    try:
        line.report(5)
        line.report(7, "a1b2c3", 8)
        beats: list[Beat] = []
        wait_until(lambda: collect(server, beats, 2), timeout=10, what="two beats")
        assert beats == [Beat(token, 5), Beat(token, 7, "a1b2c3", 8)]
        assert not stop.is_set()
    finally:
        line.close()


def test_a_stranger_without_a_valid_token_is_refused(server: LifelineServer) -> None:
    """A local program that does not know a token gets its connection closed, beats ignored."""
    stop = threading.Event()
    line = lifeline.attach(stop, {lifeline.ENV: f"{server.port}:not-a-token"})
    assert line is not None
    try:
        line.report(1)
        wait_until(lambda: server.read() == [] and server.refused == 1, timeout=10,
                   what="the stranger refused")
    finally:
        line.close()


def test_the_child_stops_after_its_grace_when_the_supervisor_is_gone(
    server: LifelineServer,
) -> None:
    """The supervisor's end closes (as on kill -9): the child's stop is set, not before."""
    env, _ = server.issue(grace=0.3)
    stop = threading.Event()
    line = lifeline.attach(stop, {lifeline.ENV: env})
    assert isinstance(line, Lifeline)
    wait_until(lambda: server.read() == [] and len(server.sockets()) == 2, timeout=10,
               what="the child connected")
    server.close()
    wait_until(stop.is_set, timeout=10, what="the child told to stop")
    assert line.lost
    line.close()


def test_no_lifeline_when_started_alone_and_stop_when_it_cannot_connect() -> None:
    """Without POWMON_LIFELINE nothing happens; with a dead one, the child stops at once."""
    stop = threading.Event()
    assert lifeline.attach(stop, {}) is None
    assert not stop.is_set()
    dead = LifelineServer()
    env, _ = dead.issue()
    dead.close()
    assert lifeline.attach(stop, {lifeline.ENV: env}) is None
    assert stop.is_set()
