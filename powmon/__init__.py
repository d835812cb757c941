"""PowMon: power readings from Arduinos, over serial, onto a ZeroMQ bus, into CSV and upstream."""

from __future__ import annotations

__version__ = "0.1.0"
