"""The live page's axes in real headless Chromium, set to a US time zone: time in UTC, 24-hour,
as in the CSV files and every other tool (not the browser's "1:07:31 PM"), and one power axis
per sensor, VA for an AC sensor, so that a 30 W load next to a 920 VA one is not a flat line."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_web_page import ARGS, CHROMIUM, TIMEOUT_MS
from tests.helpers import Proc, python_module, unavailable, write_settings
from tests.pipeline import report_when, start_web

pytestmark = pytest.mark.e2e

ZONE = "America/New_York"  # never UTC: 5 or 4 hours behind it
HHMMSS = re.compile(r"\d\d:\d\d:\d\d")
SENSORS = [  # 2.5 A x 12 V = 30 W; 4 A RMS x 230 V = 920 VA
    {"PORT": "sim://VIC?amps=2.5&noise=0.02", "SENSORS_ID": "VIC", "VCC": 12.0},
    {"PORT": "sim://ATT?amps=4&ac=50&noise=0.02", "SENSORS_ID": "ATT", "VCC": 230.0,
     "MODE": "ac", "MAINS_HZ": 50},
]


@pytest.fixture
def us_page(tmp_path: Path) -> Iterator[Any]:
    """A page of a fresh Chromium profile whose clock shows New York time."""
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
                headless=True, viewport={"width": 1280, "height": 900}, timezone_id=ZONE,
                locale="en-US",
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


def utc_hours(minutes: int) -> set[str]:
    """The UTC hours ("HH") of the last `minutes` minutes, and of the next one."""
    now = datetime.now(timezone.utc)
    return {(now - timedelta(minutes=m)).strftime("%H") for m in range(-1, minutes + 1)}


def test_the_time_axis_is_utc_24_hour_and_each_sensor_has_its_own_power_axis(
    tmp_path: Path, spawn: Callable[..., Proc], us_page: Any
) -> None:
    """In a New York browser: the x tick labels and the legend's time under the cursor are
    HH:MM:SS in UTC, with no AM/PM; the axis says UTC; VIC's axis is W and ATT's (MODE ac) VA,
    each on its own scale, so the 30 W line's range is not the 920 VA one's."""
    settings = write_settings(tmp_path / "settings.yaml", SENSORS, POLLING_DELAY=0.05)
    cfg = ("--config", str(settings))
    spawn(python_module("powmon.broker", *cfg), "broker")
    for entry in SENSORS:
        sensor = str(entry["SENSORS_ID"])
        spawn(python_module("powmon.readers", "--sensor-id", sensor, *cfg), f"reader-{sensor}")
    web = start_web(spawn, settings)
    report_when(web, lambda r: all(s["fresh"] for s in r["sensors"].values()), "readings")
    page = us_page
    page.goto(web.url + "/")
    assert page.evaluate("new Date(Date.UTC(2026, 10, 25, 13)).getHours()") != 13  # not UTC
    page.wait_for_function(
        "() => ['VIC', 'ATT'].every(s => (window.powmon.points[s] || 0) >= 20)"
        " && window.powmon.xTicks.length >= 2", timeout=TIMEOUT_MS,
    )
    ticks = page.evaluate("window.powmon.xTicks")
    assert all(HHMMSS.fullmatch(t) for t in ticks), ticks
    assert {t[:2] for t in ticks} <= utc_hours(6), ticks  # UTC, not New York's hours
    axes = page.evaluate("window.powmon.plot.axes.map(a => a.label)")
    assert axes == ["time (UTC)", "VIC (W)", "ATT (VA)"]
    scales = page.evaluate("window.powmon.plot.series.slice(1).map(s => s.scale)")
    assert scales == ["VIC", "ATT"]
    vic = page.evaluate("[window.powmon.plot.scales.VIC.min, window.powmon.plot.scales.VIC.max]")
    att = page.evaluate("[window.powmon.plot.scales.ATT.min, window.powmon.plot.scales.ATT.max]")
    assert vic[1] < 100 and att[0] > 500, (vic, att)  # each load fills its own axis
    box = page.locator("#chart .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] / 2)
    time_cell = page.locator(".u-legend .u-series").first.locator(".u-value")
    page.wait_for_function(
        "el => /^\\d\\d:\\d\\d:\\d\\d$/.test(el.textContent)", arg=time_cell.element_handle(),
        timeout=TIMEOUT_MS,
    )
    shown = time_cell.inner_text()
    assert "AM" not in shown.upper() and "PM" not in shown.upper()
    assert shown[:2] in utc_hours(6), shown
    legend = page.locator(".u-legend").inner_text()
    assert "VA" in legend and "time (UTC)" in legend
    shot = tmp_path / "axes.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
