"""What several sections' values are made of: a Secret, and a path as the settings file means it.

Kept apart so that each section (sensors, bus, uplink) and the whole can use them without
importing each other.
"""

from __future__ import annotations

from pathlib import Path


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def secret(value: str | None) -> Secret | None:
    return None if value is None else Secret(value)


def resolve(base: Path, value: str) -> Path:
    """A path from the file: `~` expanded, and relative to `base` (the settings file's folder,
    or the data root for the spool) unless absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
