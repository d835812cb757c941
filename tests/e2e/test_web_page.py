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

from tests.helpers import Proc, unavailable
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
    for each sensor over the event stream, the status table shows each process up, the window
    selector narrows the chart to 1 minute; a screenshot is saved with the test output."""
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
