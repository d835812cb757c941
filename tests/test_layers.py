"""The layers of docs/architecture.md, held against the imports of every module.

A module may import from its own package and from the layers below its own, never from a
layer above; the process packages of one layer (readers, broker, writer, uplink, web, and the
offline tools) do not import each other either, so each can change, or run, alone. The walk
reads every import statement, including those inside functions (lazy imports are imports).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent

# (package, the folder that holds it, its layer): the longest matching package names a module's
LAYERS: Final = (
    ("powmon.common", "common", 0),  # contracts: settings, wire schema, transport
    ("powmon.base", "base", 1),  # shared: process table, health, storage format, energy
    ("powmon.sink", "sink", 2),  # the core the storing processes share
    ("powmon.sim", "sim", 2),  # the simulated Arduino
    ("powmon.readers", "readers", 3),
    ("powmon.broker", "broker", 3),
    ("powmon.writer", "writer", 3),
    ("powmon.uplink", "uplink", 3),
    ("powmon.web", "web", 3),
    ("powmon.analysis", "powmon/analysis", 3),  # report, plot: offline tools
    ("powmon", "powmon", 4),  # the command line, its supervisor (`powmon run`) and the bench
)
# Top-level modules of the powmon package that others may import (the version, nothing else).
ANYONE_MAY_IMPORT: Final = {"powmon"}


def package_of(module: str) -> tuple[str, int]:
    best = max((p for p in LAYERS if module == p[0] or module.startswith(p[0] + ".")),
               key=lambda p: len(p[0]))
    return best[0], best[2]


def modules() -> Iterator[tuple[str, Path]]:
    """Every module of the installed package, by dotted name, with its file."""
    seen: set[Path] = set()
    for package, folder, _ in sorted(LAYERS, key=lambda p: -len(p[1])):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in seen or ".venv" in path.parts:
                continue
            seen.add(path)
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                yield node.lineno, ".".join([*base, *(node.module or "").split(".")]).rstrip(".")
            elif node.module:
                yield node.lineno, node.module


def violations() -> list[str]:
    found = []
    for module, path in modules():
        own, layer = package_of(module)
        for line, target in imports(path, module):
            if not target.startswith("powmon") or target in ANYONE_MAY_IMPORT:
                continue
            other, other_layer = package_of(target)
            if other == own:
                continue
            if other_layer > layer or (other_layer == layer and layer > 0):
                where = "above it" if other_layer > layer else "beside it"
                found.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}, "
                             f"from layer {other_layer} ({other}), {where} (layer {layer})")
    return found


def test_no_module_imports_from_a_layer_above_or_beside_its_own() -> None:
    assert violations() == []


def sink_internals() -> list[str]:
    """Imports of the sink core's own modules from outside sink/: a sink sees `powmon.sink.api`
    only (docs/sink.md), so the core can change inside without touching the writer or the
    uplink. `from powmon.sink import api` counts too: write `from powmon.sink.api import ...`."""
    found = []
    for module, path in modules():
        if package_of(module)[0] == "powmon.sink":
            continue
        for line, target in imports(path, module):
            inside = target == "powmon.sink" or target.startswith("powmon.sink.")
            if inside and target != "powmon.sink.api":
                found.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}, "
                             "not powmon.sink.api")
    return found


def test_sinks_import_only_the_sink_api() -> None:
    assert sink_internals() == []
    writer = ROOT / "writer" / "writer.py"  # the walk sees the sinks' imports of the api
    assert "powmon.sink.api" in {t for _, t in imports(writer, "powmon.writer.writer")}


def test_the_walk_sees_every_package_and_their_imports() -> None:
    """The check above is only as good as its walk: it must find modules in every package
    and the imports that tie them (a walk that found nothing would pass)."""
    names = {package_of(m)[0] for m, _ in modules()}
    assert names == {p[0] for p in LAYERS}
    writer = ROOT / "writer" / "writer.py"
    assert any(t.startswith("powmon.sink") for _, t in imports(writer, "powmon.writer.writer"))


def test_a_backward_import_is_reported(tmp_path: Path) -> None:
    """A module of the shared layer that imported a process would be named, with its line."""
    assert package_of("powmon.base.health") == ("powmon.base", 1)
    assert package_of("powmon.analysis.report") == ("powmon.analysis", 3)
    assert package_of("powmon.supervisor.run") == ("powmon", 4)
    bad = tmp_path / "bad.py"
    bad.write_text("from powmon.uplink.config import UplinkConfig\n")
    (line, target), = imports(bad, "powmon.base.bad")
    assert (line, package_of(target)[1]) == (1, 3)


LONG: Final = 350  # lines: a module longer than this says why in its docstring


def test_a_long_module_says_why_in_its_docstring() -> None:
    """Small modules with one job: one over LONG lines is allowed only with a reason, in its
    docstring, starting "This module is long because"."""
    unexplained = []
    for _, path in modules():
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > LONG and "This module is long because" not in " ".join(doc.split()):
            unexplained.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert unexplained == []


def test_the_map_names_every_package_of_the_layers() -> None:
    """docs/architecture.md is the map a newcomer reads first: each package the walk knows has
    its line there, so a new package cannot land without being put on the map."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [folder for _, folder, _ in LAYERS if f"`{folder}/`" not in text]
    assert missing == []
