"""The live page in real headless Chromium against a running pipeline on simulated sensors.

Chromium is Debian's (`bash web/install-deps.sh`), driven by the playwright package through
executable_path: no browser download. With POWMON_WEB_SCREENSHOT set to a path, the test also
copies its screenshot there: README's docs/web.png is made this way.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Proc, python_module, unavailable, write_settings
from tests.pipeline import SENSORS, report_when, start_pipeline, start_web

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_ENV = "POWMON_WEB_SCREENSHOT"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A page of a fresh Chromium profile; the test fails in CI if Chromium is missing."""
    try:
        from playwright.sync_api import Error, sync_playwright  # noqa: PLC0415 (optional)
    except ImportError as err:
        unavailable("chromium", f"the playwright package is not installed: {err}")
    if not CHROMIUM.exists():
        unavailable("chromium", f"{CHROMIUM} is missing (bash web/install-deps.sh)")
    with sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=ARGS,
                headless=True, viewport={"width": 1280, "height": 900},
            )
        except Error as err:
            unavailable("chromium", f"cannot start {CHROMIUM}: {err}")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield page
        finally:
            context.close()
        assert not errors, f"script errors on the page: {errors}"


def test_the_page_shows_live_points_per_sensor_and_every_process_up(
    tmp_path: Path, spawn: Callable[..., Proc], browser_page: Any
) -> None:
    """The page loads with no internet (uPlot is served by PowMon), its chart receives points
    for each sensor over the event stream, the status table shows each process up, each
    sensor's gaps as a count and lost as 0, and the writer's rows labelled as counted since its
    start; the window selector narrows the chart to 1 minute; a screenshot is saved with the
    test output."""
    pipe = start_pipeline(spawn, tmp_path)
    web = start_web(spawn, pipe.settings)
    report_when(web, lambda r: r["ok"], "pipeline up")
    page = browser_page
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(web.url)
               else route.continue_())  # nothing but PowMon itself: proves it works offline
    page.goto(web.url + "/")
    page.wait_for_function(
        "sensors => sensors.every(s => (window.powmon.points[s] || 0) >= 40)", arg=list(SENSORS),
        timeout=TIMEOUT_MS,
    )
    processes = ["broker", "writer", *(f"reader/{s}" for s in SENSORS)]
    page.wait_for_function(
        "names => names.every(n => document.querySelector(`tr[data-process='${n}']`)"
        "?.dataset.up === '1')", arg=processes, timeout=TIMEOUT_MS,
    )
    assert page.locator("#health").inner_text() == "pipeline up"
    legend = page.locator(".u-legend").inner_text()
    assert all(s in legend for s in SENSORS)
    page.wait_for_function(  # every sensor's line drawn, not only received
        "n => window.powmon.plot.data.length === n + 1 && window.powmon.plot.data.slice(1)"
        ".every(ys => ys.filter(y => y !== null).length >= 30)", arg=len(SENSORS),
        timeout=TIMEOUT_MS,
    )
    sensors = page.locator("#sensors tbody").inner_text()
    assert all(s in sensors for s in SENSORS)
    # The writer's count is since its start, not the file's: labelled so, beside the size.
    sinks = page.locator("#sinks").inner_text()
    assert "rows written since writer start" in sinks, sinks
    # Per-sensor gaps and lost: numbers, not dashes. Lost is 0; gaps counts holes seen, filled
    # ones too (a writer that joins after a reader's first readings fills [0, first) by replay).
    page.wait_for_function(
        "() => [...document.querySelectorAll('#sensors tbody tr')].every(tr => "
        "/^[0-9]+$/.test(tr.cells[tr.cells.length - 2].textContent) && "
        "tr.cells[tr.cells.length - 1].textContent === '0')", timeout=TIMEOUT_MS,
    )
    page.click("button[data-min='1']")
    page.wait_for_function("window.powmon.range && "
                           "Math.abs(window.powmon.range[1] - window.powmon.range[0] - 60) < 1",
                           timeout=TIMEOUT_MS)
    assert page.evaluate("window.powmon.connected") is True
    target = os.environ.get(SCREENSHOT_ENV)
    if target:  # for README: most of the minute filled, to show what a person sees
        page.wait_for_function("sensors => sensors.every(s => window.powmon.points[s] >= 180)",
                               arg=list(SENSORS), timeout=90_000)
    shot = tmp_path / "web.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if target:
        shutil.copyfile(shot, target)


def test_the_page_says_why_a_sensor_whose_port_is_missing_has_no_reading(
    tmp_path: Path, spawn: Callable[..., Proc], browser_page: Any
) -> None:
    """A sensor whose PORT does not exist: its row says "port not found: ...; retrying" where
    a fresh sensor shows the age of its last reading (the reader's heartbeat `problem`)."""
    settings = write_settings(
        tmp_path / "settings.yaml",
        [{"PORT": "sim://VIC?amps=2", "SENSORS_ID": "VIC"},
         {"PORT": str(tmp_path / "ttyNOPE0"), "SENSORS_ID": "NOPE"}],
        POLLING_DELAY=0.05,
    )
    cfg = ("--config", str(settings))
    spawn(python_module("powmon.broker", *cfg), "broker")
    spawn(python_module("powmon.writer", *cfg), "writer")
    for sensor in ("VIC", "NOPE"):
        spawn(python_module("powmon.readers", "--sensor-id", sensor, *cfg), f"reader-{sensor}")
    web = start_web(spawn, settings)
    report_when(web, lambda r: bool(r["sensors"]["NOPE"]["problem"]), "the problem in status")
    page = browser_page
    page.goto(web.url + "/")
    row = page.locator("#sensors tr[data-sensor='NOPE']")
    row.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector(\"#sensors tr[data-sensor='NOPE']\")"
        "?.dataset.problem.startsWith('port not found: ')", timeout=TIMEOUT_MS,
    )
    assert "ttyNOPE0" in row.inner_text() and "retrying" in row.inner_text()
    assert page.locator("#sensors tr[data-sensor='VIC']").get_attribute("data-problem") == ""
