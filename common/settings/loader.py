"""Reading settings.yaml once: parse, check every key, apply each section's rules, build.

Every check happens here, before any process opens a port or a socket, so that a typo stops the
program with a line naming the file, the key, what was expected and what was found, instead of
a traceback minutes later. Every mistake of a file is found in one pass (problems.py), so that
`powmon check-config` can list them all at once. The file is parsed once: YAML's node tree
gives each key's line, then the same tree gives the values. Nothing in PowMon ever writes this
file.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Final

import yaml

from powmon.common import checks as c
from powmon.common.errors import SettingsError
from powmon.common.settings.bus import check_bus
from powmon.common.settings.keys import LEGACY_IGNORED, TOP
from powmon.common.settings.problems import Found, shown_key
from powmon.common.settings.sensors import check_sensors, sensor_values
from powmon.common.settings.uplink import check_uplink
from powmon.common.settings.whole import Settings, build

ENV_SETTINGS: Final = "POWMON_SETTINGS"
DEFAULT_SETTINGS: Final = "settings.yaml"


def default_settings_path() -> Path:
    return Path(os.environ.get(ENV_SETTINGS, DEFAULT_SETTINGS))


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, validate and freeze settings. Every mistake of the file is found before any is
    reported (SettingsProblems); an unreadable or non-YAML file is one SettingsError."""
    where = Path(path) if path is not None else default_settings_path()
    raw, lines = _read_yaml(where)
    found = Found(where, lines)
    values = _check_top(found, raw)
    base = where.resolve().parent
    sensors = check_sensors(found, values) if found.trusts("SENSORS") else ()
    check_uplink(found, values)
    curve = check_bus(found, base, values)
    found.raise_any()
    return build(where, base, values, sensors, curve)


def effective_values(settings: Settings) -> dict[str, Any]:
    """Every key with the value in force, defaults filled in, SENSORS entries with what they
    inherit: what `powmon check-config` shows. Secrets are in SECRET_KEYS (mask them).

    Takes settings load_settings already validated (the file is not checked twice); raises
    SettingsError only if the file changed meanwhile.
    """
    raw, lines = _read_yaml(settings.path)
    found = Found(settings.path, lines)
    values = _check_top(found, raw)
    found.raise_any()
    entries = [sensor_values(found, i, e, values) for i, e in enumerate(raw["SENSORS"])]
    found.raise_any()
    values["SENSORS"] = entries
    return values


def _read_yaml(where: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The parsed file, and the line of each top-level key and SENSORS entry."""
    try:
        text = where.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{where}: cannot read settings: {err}") from err
    try:
        data, lines = _parse(text)
    except RecursionError:  # PyYAML composes nested nodes recursively; found by fuzzing
        raise SettingsError(f"{where}: not valid YAML: nested too deeply") from None
    except yaml.reader.ReaderError as err:  # a character YAML forbids; its str() is two lines
        line = text.count("\n", 0, err.position) + 1
        raise SettingsError(
            f"{where}: line {line}: not valid YAML: character #x{err.character:04x}: {err.reason}"
        ) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SettingsError(f"{where}: {at}not valid YAML: {problem}") from err
    if not isinstance(data, dict):
        raise SettingsError(
            f"{where}: expected a mapping of settings at the top level, got {type(data).__name__}"
        )
    return data, lines


def _parse(text: str) -> tuple[Any, dict[str, int]]:
    """What yaml.safe_load returns, and the lines of the keys, from one pass of YAML's parser:
    safe_load composes the node tree and builds the values from it; here the lines are read
    from the tree in between (building rewrites merge keys in place, so first)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        lines = _lines(root)
        return (None if root is None else loader.construct_document(root)), lines
    finally:
        loader.dispose()


def _lines(root: yaml.Node | None) -> dict[str, int]:
    """1-based lines of the top-level keys ('BUDRATE'), the SENSORS entries ('SENSORS[1]')
    and their keys ('SENSORS[1].PORT'), from the marks of YAML's nodes (the values have
    none). Keys YAML does not read as plain strings get none."""
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        lines[key.value] = key.start_mark.line + 1
        if key.value != "SENSORS" or not isinstance(value, yaml.SequenceNode):
            continue
        for i, entry in enumerate(value.value):
            lines[f"SENSORS[{i}]"] = entry.start_mark.line + 1
            if isinstance(entry, yaml.MappingNode):
                for sub, _ in entry.value:
                    if isinstance(sub, yaml.ScalarNode):
                        lines[f"SENSORS[{i}].{sub.value}"] = sub.start_mark.line + 1
    return lines


def _unknown(key: Any) -> str:
    """What to say of a top-level key PowMon does not know: the nearest known key, if one is
    close (a misspelling, or lower case), since the key table is long to read through."""
    near = difflib.get_close_matches(key.upper(), TOP, n=1) if isinstance(key, str) else []
    hint = f"did you mean {near[0]}?" if near else "typo?"
    return f"not a PowMon setting; {hint} (see deploy/settings.example.yaml)"


def _check_top(found: Found, raw: dict[str, Any]) -> dict[str, Any]:
    """Each top-level key against its check. A key that fails keeps its default in the
    result, so that sensors can still inherit from it and be checked themselves."""
    values: dict[str, Any] = {}
    for key in raw:
        if key not in TOP and key not in LEGACY_IGNORED:
            found.add(shown_key(key), _unknown(key))
    for key, (check, default) in TOP.items():
        if key in raw:
            try:
                values[key] = check(raw[key])
                continue
            except c.Bad as bad:
                found.fail(key, bad.expected, raw[key])
        elif default is c.REQUIRED:
            found.add(key, "required key is missing")
        if default is not c.REQUIRED:
            values[key] = default
    return values
