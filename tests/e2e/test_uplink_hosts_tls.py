"""Where the HTTP output sends, and whom it trusts: real broker and uplink processes, real
`powmon keygen` / `powmon encrypt-url` commands, real HTTP(S) servers on 127.0.0.1.

- An encrypted `HOST` (a token from `powmon encrypt-url`, its key from `powmon keygen` in
  $POWMON_HOST_KEY or HOST_KEY_FILE) is where readings go; the decrypted URL never shows in the
  log or the data folder. `UPLINK_URL`, when set too, wins.
- TLS: a server whose CA the uplink does not trust gets no request at all (the handshake
  fails), the readings stay spooled and the error is in the heartbeat and the log; with that
  CA as `UPLINK_VERIFY_TLS` the same spooled readings are delivered; `UPLINK_VERIFY_TLS:
  false` delivers without the CA, warning once at start (not once per request).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq

from tests.helpers import Proc, python_module, wait_until
from tests.httpserver import RecordingServer
from tests.servers.tls import make_certs
from tests.tlsserver import TlsRecordingServer
from tests.uplinkrun import UplinkRun

pytestmark = pytest.mark.e2e

Key = tuple[str, str, int]
KEY_ENV = "POWMON_HOST_KEY"
HIDDEN_PATH = "/ingest/site-7f3a"  # the part of the URL only the token holds
HTTP: dict[str, Any] = {"REMOTE_SAVE": True, "UPLINK_FORMAT": "json", "UPLINK_BATCH_WAIT": 0.1,
                        "UPLINK_TIMEOUT": 2.0, "UPLINK_BACKOFF_MAX": 0.3}


class Run(UplinkRun):
    """An UplinkRun whose uplink gets `env` on top of this environment, without any
    $POWMON_HOST_KEY of the caller's."""

    def __init__(self, tmp_path: Path, spawn: Callable[..., Proc],
                 broker: Callable[[Path], Proc], ctx: zmq.Context[zmq.Socket[bytes]],
                 env: Mapping[str, str], **overrides: Any) -> None:
        self.env = {k: v for k, v in os.environ.items() if k != KEY_ENV} | dict(env)
        super().__init__(tmp_path, spawn, broker, ctx, **overrides)

    def start_uplink(self) -> Proc:
        self.counters = {}
        argv = python_module("powmon.uplink", "--config", str(self.settings))
        return self.spawn(argv, "uplink", env=self.env)


Start = Callable[..., Run]


@pytest.fixture
def start(tmp_path: Path, spawn: Callable[..., Proc], broker: Callable[[Path], Proc],
          zmq_ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Start]:
    """start(env={...}, **settings): broker + uplink; the test's bus sockets closed after."""
    runs: list[Run] = []

    def go(env: Mapping[str, str] | None = None, **overrides: Any) -> Run:
        runs.append(Run(tmp_path, spawn, broker, zmq_ctx, env or {}, **(HTTP | overrides)))
        return runs[-1]

    yield go
    for run in runs:
        run.pub.close()
        run.status_sub.close()


def powmon(*args: str, env: Mapping[str, str] | None = None) -> str:
    """Run the `powmon` command; its stdout (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-m", "powmon", *args], capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != KEY_ENV} | dict(env or {}),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def publish_until(run: UplinkRun, session: str, done: Callable[[], object], what: str) -> None:
    """Publish one reading of `session` per poll until `done()`: the uplink subscribes through
    the broker, so the first readings may go before it listens."""
    seqs = itertools.count()

    def step() -> object:
        run.publish(session, [next(seqs)])
        return done()

    wait_until(step, 30, interval=0.05, what=what)


def delivered(server: RecordingServer) -> set[Key]:
    return {(d["sensor_id"], d["session"], d["seq"])
            for rec in server.delivered() for d in json.loads(rec.body)}


def http(counters: dict[str, Any]) -> dict[str, Any]:
    found = counters.get("output_http")
    return found if isinstance(found, dict) else {}


def spooled(run: UplinkRun) -> set[Key]:
    with closing(sqlite3.connect(run.spool_path)) as db:
        rows = db.execute("SELECT sensor_id, session, seq FROM readings").fetchall()
    return {(str(s), str(sess), int(seq)) for s, sess, seq in rows}


def bundle_env(ca: Path) -> dict[str, str]:
    """The variables with which requests replaces a session's `verify` (and curl its CAs),
    naming `ca`: UPLINK_VERIFY_TLS (a path, or false) must win over them."""
    return {"REQUESTS_CA_BUNDLE": str(ca), "CURL_CA_BUNDLE": str(ca)}


def set_setting(run: UplinkRun, key: str, value: Any) -> None:
    data = yaml.safe_load(run.settings.read_text())
    data[key] = value
    run.settings.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


# --- encrypted HOST ------------------------------------------------------------------------


def test_the_uplink_sends_to_the_decrypted_host(tmp_path: Path, start: Start) -> None:
    """keygen, encrypt-url with the key in $POWMON_HOST_KEY, HOST = the token and no
    UPLINK_URL: readings reach the secret URL; the log names scheme://host:port only, and
    neither the log nor the data folder holds the URL's path."""
    with RecordingServer(path=HIDDEN_PATH) as server:
        key = powmon("keygen")
        token = powmon("encrypt-url", server.url, env={KEY_ENV: key})
        assert HIDDEN_PATH not in token
        run = start(env={KEY_ENV: key}, HOST=token)
        publish_until(run, "host", lambda: delivered(server), "a reading at the decrypted URL")
        assert {rec.path for rec in server.delivered()} == {HIDDEN_PATH}
        assert run.uplink.stop() == 0
    log = run.uplink.output()
    assert f"HOST decrypted with the key from ${KEY_ENV}: {server.base_url}" in log
    assert HIDDEN_PATH not in log
    for path in (tmp_path / "data").rglob("*"):
        assert not path.is_file() or HIDDEN_PATH.encode() not in path.read_bytes(), path


def test_uplink_url_wins_over_host(tmp_path: Path, start: Start) -> None:
    """HOST (key in HOST_KEY_FILE) names one server, UPLINK_URL another: readings go to
    UPLINK_URL's, the HOST one gets nothing, and the log says HOST is ignored."""
    key_file = tmp_path / "host.key"
    powmon("keygen", "--out", str(key_file))
    with RecordingServer() as by_host, RecordingServer() as by_url:
        token = powmon("encrypt-url", by_host.url, "--key-file", str(key_file))
        run = start(HOST=token, HOST_KEY_FILE=str(key_file), UPLINK_URL=by_url.url)
        publish_until(run, "both", lambda: delivered(by_url), "a reading at UPLINK_URL")
        run.publish("after", range(3))
        wait_until(lambda: {("VIC", "after", s) for s in range(3)} <= delivered(by_url), 20,
                   what="three more readings at UPLINK_URL")
        assert by_host.snapshot() == []
        assert run.uplink.stop() == 0
    assert "UPLINK_URL is set; HOST is ignored" in run.uplink.output()


# --- TLS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("untrusted", ["default CAs", "another CA"])
def test_an_untrusted_certificate_is_refused_until_its_ca_is_configured(
    tmp_path: Path, start: Start, untrusted: str
) -> None:
    """Verification against the default CAs, or against a CA bundle that did not sign the
    server's certificate: no request reaches the server, readings stay spooled, the error is
    reported. The same readings arrive once UPLINK_VERIFY_TLS names the server's CA, even
    with $REQUESTS_CA_BUNDLE naming another one."""
    ca, cert, key = make_certs(tmp_path / "certs")
    other_ca, _, _ = make_certs(tmp_path / "other")
    verify: bool | str = True if untrusted == "default CAs" else str(other_ca)
    with TlsRecordingServer(cert, key) as server:
        run = start(UPLINK_URL=server.url, UPLINK_VERIFY_TLS=verify)
        publish_until(run, "tls", lambda: http(run.status()).get("retries", 0) >= 2,
                      "two refused handshakes")
        status = run.wait_status(lambda c: http(c)["spool_depth"] == c["received"] >= 1,
                                 "every reading received kept in the spool")
        out = http(status)
        assert out["state"] == "retrying" and out["sent"] == 0 and out["dead_lettered"] == 0
        assert "CERTIFICATE_VERIFY_FAILED" in out["last_error"], out
        assert server.snapshot() == []
        assert run.uplink.stop() == 0
        assert f"send to {server.base_url} failed (SSLError" in run.uplink.output()
        kept = spooled(run)
        assert len(kept) == status["received"]
        set_setting(run, "UPLINK_VERIFY_TLS", str(ca))
        run.env |= bundle_env(other_ca)
        run.uplink = run.start_uplink()
        wait_until(lambda: delivered(server) == kept, 20, what="the kept readings, over TLS")
        run.wait_status(lambda c: c["spool_depth"] == 0, "spool drained")
        assert run.uplink.stop() == 0


def test_verify_tls_false_delivers_without_the_ca_and_warns_once(
    tmp_path: Path, start: Start
) -> None:
    """UPLINK_VERIFY_TLS: false delivers to a server whose CA nobody gave the uplink (and
    that $REQUESTS_CA_BUNDLE would refuse); one WARNING at start says so, and urllib3's
    warning is not repeated for each request."""
    _, cert, key = make_certs(tmp_path / "certs")
    other_ca, _, _ = make_certs(tmp_path / "other")
    with TlsRecordingServer(cert, key) as server:
        run = start(env=bundle_env(other_ca), UPLINK_URL=server.url, UPLINK_VERIFY_TLS=False,
                    UPLINK_BATCH_WAIT=0.0)
        publish_until(run, "insecure", lambda: len(server.delivered()) >= 3,
                      "three requests delivered over unverified TLS")
        assert run.uplink.stop() == 0
    log = run.uplink.output()
    assert log.count("UPLINK_VERIFY_TLS is false") == 1
    assert "InsecureRequestWarning" not in log
