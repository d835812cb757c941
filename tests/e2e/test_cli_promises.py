"""What the README promises of every command, on the installed commands as real processes:
$POWMON_SETTINGS as the default settings path (and --config over it), --help everywhere, the
log format (UTC, colour on a terminal only, NO_COLOR, --log-level), and exit 2 for a bad
sim:// option (docs/reader.md)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
import zmq

from powmon.cli import SUBCOMMANDS
from powmon.common.settings import ENV_SETTINGS, load_settings
from tests.bus import Bus, BusEnd
from tests.helpers import Proc, wait_until, write_settings

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VIC = [{"PORT": "sim://VIC", "SENSORS_ID": "VIC"}]


def command(name: str) -> str:
    """An installed entry point ([project.scripts]), beside this interpreter."""
    path = Path(sys.executable).with_name(name)
    assert path.is_file(), f"{path} is not installed (pip install -e .)"
    return str(path)


def env_with(**extra: str) -> dict[str, str]:
    """This environment without $POWMON_SETTINGS and NO_COLOR, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_SETTINGS, "NO_COLOR")}
    env.update(extra)
    return env


# ---- $POWMON_SETTINGS and --config ------------------------------------------------------------

def test_check_config_reads_powmon_settings_and_config_wins(tmp_path: Path) -> None:
    """Without --config, check-config validates the file $POWMON_SETTINGS names; --config
    names another file and that one is validated instead."""
    named = write_settings(tmp_path / "named.yaml", VIC)
    given = write_settings(tmp_path / "given.yaml", VIC)
    for extra, shown in (([], named), (["--config", str(given)], given)):
        done = subprocess.run([command("powmon"), "check-config", *extra], cwd=tmp_path,
                              env=env_with(POWMON_SETTINGS=str(named)), capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"{shown.resolve()}: valid."), done.stdout


def test_the_broker_reads_powmon_settings_and_config_wins(
    tmp_path: Path, spawn: Callable[..., Proc], bus_for: Callable[[Path], BusEnd]
) -> None:
    """powmon-broker with $POWMON_SETTINGS naming a broken file stops on that file (exit 2);
    with --config naming a good one it runs on that one."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("SENSORS: []\n", encoding="utf-8")
    env = env_with(POWMON_SETTINGS=str(broken))
    refused = spawn([command("powmon-broker")], "broker-env", env=env)
    assert refused.popen.wait(30) == 2
    assert f"{broken}: SENSORS: expected a non-empty list" in refused.output()
    good = write_settings(tmp_path / "good.yaml", VIC)
    broker = spawn([command("powmon-broker"), "--config", str(good)], "broker", env=env)
    bus = bus_for(good)

    def heard() -> bool:
        bus.counters("broker")  # takes the heartbeats in (a plain broker's counters are {})
        return "broker" in bus.latest

    wait_until(heard, 30, what="the broker's heartbeat on good.yaml's backend")
    assert broker.stop() == 0


# ---- --help -----------------------------------------------------------------------------------

def project_scripts() -> list[str]:
    """The entry point names of pyproject.toml's [project.scripts]."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"^\[project\.scripts\]\n(.*?)^\[", text, re.MULTILINE | re.DOTALL)
    assert section is not None
    return re.findall(r"^([\w-]+) *=", section[1], re.MULTILINE)


HELP_ARGV = [[name] for name in project_scripts()] + [["powmon", s] for s in sorted(SUBCOMMANDS)]


def usage(argv: list[str]) -> str:
    """`argv --help`: it exits 0 and prints the command's usage; its output."""
    done = subprocess.run([command(argv[0]), *argv[1:], "--help"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: {' '.join(argv)} "), done.stdout
    return done.stdout


@pytest.mark.parametrize("argv", HELP_ARGV, ids=" ".join)
def test_help_works_on_every_command(argv: list[str]) -> None:
    """`--help` exits 0 and prints usage, on every entry point and `powmon` subcommand, and
    on the commands a subcommand lists (`powmon deploy systemd`)."""
    text = usage(argv)
    if argv[0] == "powmon" and len(argv) > 1:  # `powmon` itself lists what is parametrized
        listed = text.partition("\nCommands:\n")[2]
        for name in re.findall(r"^  (\S+)", listed, re.MULTILINE):
            usage([*argv, name])


# ---- the log format ---------------------------------------------------------------------------

LINE = re.compile(
    r"(?P<colour>\x1b\[32m)?(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z INFO    "
    r"powmon-broker\[(?P<pid>\d+)\] broker up"
)


def broker_first_line(settings: Path, *, tty: bool, env: dict[str, str]) -> tuple[str, int]:
    """The broker's stderr (a pseudo-terminal, or a pipe) up to its 'broker up' line."""
    reader, writer = pty.openpty() if tty else os.pipe()
    proc = subprocess.Popen([command("powmon-broker"), "--config", str(settings)],
                            stdin=subprocess.DEVNULL, stdout=writer, stderr=writer, env=env,
                            start_new_session=True)
    os.close(writer)
    got = b""

    def up() -> bool:
        nonlocal got
        while select.select([reader], [], [], 0)[0]:
            try:
                chunk = os.read(reader, 65536)
            except OSError:  # EIO: the pty's other end is gone
                break
            if not chunk:
                break
            got += chunk
        return b"broker up" in got

    try:
        wait_until(up, 30, what="the broker's first log line")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        os.close(reader)
    return got.decode("utf-8", "replace"), proc.pid


@pytest.mark.parametrize(("tty", "no_color", "coloured"), [
    (True, False, True), (True, True, False), (False, False, False),
], ids=["terminal", "terminal-NO_COLOR", "pipe"])
def test_log_lines_are_utc_and_coloured_only_on_a_terminal(
    tmp_path: Path, tty: bool, no_color: bool, coloured: bool
) -> None:
    """'ts LEVEL proc[pid] message': the time in UTC whatever TZ says (here UTC+05:45),
    the line coloured on a terminal, not with NO_COLOR set, never into a pipe."""
    settings = write_settings(tmp_path / "settings.yaml", VIC)
    env = env_with(TZ="NPT-05:45", **({"NO_COLOR": "1"} if no_color else {}))
    before = datetime.now(timezone.utc).replace(microsecond=0)
    text, pid = broker_first_line(settings, tty=tty, env=env)
    after = datetime.now(timezone.utc)
    found = LINE.search(text)
    assert found is not None, repr(text)
    assert int(found["pid"]) == pid
    stamp = datetime.fromisoformat(found["ts"]).replace(tzinfo=timezone.utc)
    assert before <= stamp <= after
    assert ("\x1b[" in text) is coloured, repr(text)
    assert bool(found["colour"]) is coloured


@pytest.mark.parametrize(("level", "status", "payload"), [
    (None, True, False), ("0", False, False), ("2", False, True),
], ids=["file", "0", "2"])
def test_log_level_option_overrides_the_file(
    tmp_path: Path, spawn: Callable[..., Proc], zmq_ctx: zmq.Context[zmq.Socket[bytes]],
    level: str | None, status: bool, payload: bool,
) -> None:
    """LOG_LEVEL 1 in the file: status lines (INFO), no readings. --log-level 0: neither;
    --log-level 2: every reading (its payload, DEBUG), no status lines."""
    settings = write_settings(tmp_path / "settings.yaml", VIC, LOG_LEVEL=1, POLLING_DELAY=0.02)
    sub = zmq_ctx.socket(zmq.SUB)  # where the broker would be: the reader's heartbeats
    sub.setsockopt(zmq.SUBSCRIBE, b"status/")
    sub.bind(load_settings(settings).broker_frontend)
    bus = Bus(sub)
    option = [] if level is None else ["--log-level", level]
    reader = spawn([command("powmon-reader"), "--config", str(settings), "--sensor-id", "VIC",
                    *option], "reader")
    try:
        bus.wait_counter("readings", 5, timeout=30)
    finally:
        sub.close(linger=0)
    assert reader.stop() == 0
    log = reader.output()
    assert (" INFO    powmon-reader-VIC[" in log) is status, log
    assert (re.search(r" DEBUG   powmon-reader-VIC\[\d+\] sensor=VIC .*seq=\d+", log)
            is not None) is payload, log


# ---- a bad sim:// option ----------------------------------------------------------------------

def test_a_bad_sim_option_stops_the_reader_with_exit_2_naming_it(tmp_path: Path) -> None:
    """docs/reader.md, docs/guarantees.md: an unknown sim:// option is bad settings, not
    retried: exit 2, one error line naming the port setting and the option."""
    settings = write_settings(tmp_path / "settings.yaml", [{"PORT": "sim://X", "SENSORS_ID": "X"}])
    done = subprocess.run(
        [command("powmon-reader"), "--port", "sim://X?nosuchoption=1", "--sensor-id", "X",
         "--config", str(settings)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2, done.stderr
    [line] = [x for x in done.stderr.splitlines() if ": error: " in x]
    assert "SENSORS[X].PORT (or --port)" in line
    assert "unknown parameter(s) 'nosuchoption'" in line
