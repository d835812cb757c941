"""`powmon plot`'s axes, read back from the matplotlib figure: one panel per sensor (a 30 W load
next to a 920 VA one is not a flat line), VA for AC sensors, and time in UTC, 24-hour, with
enough ticks to read a 13-minute plot."""

from __future__ import annotations

import csv
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("matplotlib")

from matplotlib import dates

from powmon.analysis.datafiles import data_files
from powmon.analysis.plot import build_plot
from powmon.base.storage import CSV_FIELDS
from powmon.base.text import parse_ts
from powmon.cli import main
from powmon.common.schema.readings import Flag, Reading
from tests.rows import csv_row

S = 1_000_000_000
# 13 minutes starting at 13:07:31 UTC: an afternoon, so a 12-hour clock would show "1:07 PM"
T0 = parse_ts("2026-11-25T13:07:31.000000Z")
MINUTES = 13
SIZE = (1200, 600)


def write_demo(root: Path) -> Path:
    """A DC sensor at 30 W and an AC one at 920 VA (flagged ac_rms), one reading a second."""
    path = root / "data-000001-20261125T130731Z.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(CSV_FIELDS)
        for seq in range(MINUTES * 60 + 1):
            ts = T0 + seq * S
            wobble = math.sin(seq / 20)
            out.writerow(csv_row(Reading("VIC", "s1", seq, ts, 512, 0.0, 2.5 + 0.1 * wobble,
                                         30 + 1.2 * wobble)))
            out.writerow(csv_row(Reading("ATT", "s2", seq, ts, 600, 0.0, 4.0 + 0.2 * wobble,
                                         920 + 46 * wobble, int(Flag.AC_RMS))))
    return path


def seconds(day_number: float) -> float:
    """Seconds since the epoch of a matplotlib date number."""
    return float(dates.num2date(day_number).timestamp())  # type: ignore[no-untyped-call]


def test_one_panel_per_sensor_sharing_time_with_va_for_the_ac_sensor(tmp_path: Path) -> None:
    """Two sensors: two axes with their own power scale, one time axis between them; the AC
    sensor's is labelled VA, the DC one's W, and each panel's range fits its own load."""
    fig = build_plot(data_files([write_demo(tmp_path)]), (), None, None, SIZE)
    axes = fig.axes
    assert len(axes) == 2
    labels = {ax.get_lines()[0].get_label(): ax.get_ylabel() for ax in axes}
    assert labels == {"ATT": "ATT (VA)", "VIC": "VIC (W)"}
    assert axes[0].get_shared_x_axes().joined(axes[0], axes[1])
    ranges = {ax.get_lines()[0].get_label(): ax.get_ylim() for ax in axes}
    assert ranges["VIC"][1] < 40 and ranges["VIC"][0] > 20  # not squashed under 920 VA
    assert ranges["ATT"][0] > 800
    right = [child.get_ylabel() for ax in axes for child in ax.child_axes]
    assert right == ["A", "A"]  # the same readings as current, on the right


def test_time_ticks_are_utc_24_hour_and_dense_enough_for_13_minutes(tmp_path: Path) -> None:
    """At least five tick labels, HH:MM:SS in UTC (13:xx, not 1:xx PM, whatever TZ says),
    one in the first fifth of the span; the axis says UTC."""
    fig = build_plot(data_files([write_demo(tmp_path)]), (), None, None, SIZE)
    fig.canvas.draw()
    bottom = fig.axes[-1]
    assert bottom.get_xlabel() == "time (UTC)"
    start, end = T0 / S, T0 / S + MINUTES * 60
    ticks = [t for t in bottom.get_xticks() if start <= seconds(t) <= end]
    labels = [bottom.xaxis.get_major_formatter()(t) for t in ticks]
    assert len(labels) >= 5, labels
    assert all(re.fullmatch(r"13:[0-5]\d:[0-5]\d", text) for text in labels), labels
    first = seconds(ticks[0])
    assert first - start <= (end - start) / 5
    expected = datetime.fromtimestamp(first, timezone.utc).strftime("%H:%M:%S")
    assert labels[0] == expected


def test_the_png_is_written_with_the_asked_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`powmon plot` writes the PNG under a US time zone: the figure does not depend on TZ."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        write_demo(tmp_path)
        out = tmp_path / "p.png"
        result = CliRunner().invoke(main, ["plot", str(tmp_path), "-o", str(out)])
        assert result.exit_code == 0, result.output
        header = out.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == SIZE
        fig = build_plot(data_files([tmp_path]), (), None, None, SIZE)
        fig.canvas.draw()
        texts = [t.get_text() for t in fig.axes[-1].get_xticklabels() if t.get_text()]
        assert texts and all(t.startswith("13:") for t in texts), texts
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
