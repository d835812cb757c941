"""The mistakes of one settings file, collected with their lines so that all are told at once.

Every check adds to one Found; the loader raises SettingsProblems at the end, whose message is
the first mistake (by line) and whose `problems` are all of them, each with the line YAML puts
its key on, for `powmon check-config`'s 'settings.yaml:12: KEY: ...' lines.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from powmon.common.errors import SettingsError
from powmon.common.settings.keys import TOP

T = TypeVar("T")

# What a message shows of a bad value: enough to recognise it, never the whole of a huge or
# alias-multiplied YAML structure (whose full repr can be exponentially long).
SHOW: Final = reprlib.Repr()
SHOW.maxstring = SHOW.maxother = 200
SHOW.maxlist = SHOW.maxdict = 6
SHOW.maxlevel = 2


def shown_key(key: Any) -> str:
    """A key as a message shows it: as written, or its repr if that would break the line."""
    return key if isinstance(key, str) and key.isprintable() else SHOW.repr(key)


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a settings file, worded as the loader has always worded it ("KEY:
    expected ..., got ..."), with the line YAML puts it on, so `powmon check-config` can point
    at it (None: a key YAML gives no line for, or a mistake of the file as a whole)."""

    where: Path
    line: int | None
    text: str
    named: bool = False  # the text starts with a file of its own (a key file), not `where`

    def __str__(self) -> str:
        return self.text if self.named else f"{self.where}: {self.text}"

    def located(self) -> str:
        """'settings.yaml:12: KEY: ...', the form editors and compilers use."""
        return str(self) if self.line is None else f"{self.where}:{self.line}: {self.text}"


class SettingsProblems(SettingsError):
    """Every mistake of one settings file, so that a file with five needs one fix, not five
    runs. Its message stays one line, as every entry point prints it: the first mistake (by
    line), and how many more there are; `problems` holds them all, for check-config."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda p: (p.line is None, p.line or 0)))
        first, more = str(self.problems[0]), len(self.problems) - 1
        if more:
            first += f" (and {more} more problem(s): 'powmon check-config' lists them all)"
        super().__init__(first)


class Found:
    """The problems found so far, and the keys that failed their own check (whose values the
    checks of several keys together must not trust)."""

    def __init__(self, where: Path, lines: Mapping[str, int]) -> None:
        self.where = where
        self.lines = lines
        self.problems: list[Problem] = []
        self.bad: set[str] = set()

    def add(self, key: str, text: str) -> None:
        self.bad.add(key)
        self.problems.append(Problem(self.where, self._line(key), f"{key}: {text}"))

    def fail(self, key: str, expected: str, value: Any) -> None:
        self.add(key, f"expected {expected}, got {SHOW.repr(value)}")

    def error(self, err: SettingsError) -> None:
        """A cross-key check's SettingsError, kept as one problem among the others."""
        message, prefix = str(err), f"{self.where}: "
        text = message.removeprefix(prefix)
        key = next((part for part in text.split(": ") if part in TOP), text.split(":")[0])
        line = self._line(key)
        self.problems.append(Problem(self.where, line, text, named=text == message))

    def trusts(self, *keys: str) -> bool:
        return not self.bad.intersection(keys)

    def run(self, keys: tuple[str, ...], check: Callable[..., T], *args: Any) -> T | None:
        """A check of several keys together, only when each of them passed its own check (one
        wrong value should not also be reported as a clash); its SettingsError is kept."""
        if not self.trusts(*keys):
            return None
        try:
            return check(*args)
        except SettingsError as err:
            self.error(err)
            return None

    def _line(self, key: str) -> int | None:
        while key:  # SENSORS[1].PORT, else SENSORS[1], else SENSORS
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0] if "." in key else key.rpartition("[")[0]
        return None

    def raise_any(self) -> None:
        if self.problems:
            raise SettingsProblems(self.problems)
