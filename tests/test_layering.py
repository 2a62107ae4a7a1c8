"""The package layering of docs/design.md §1, read from the source: no import cycle, no import upwards.

Bottom to top: ``clients`` < ``service`` < ``eval`` < ``training`` < ``intentlm``. A package may import its own
modules and those of the packages below it, never one above (function-level imports included: they are
imports all the same). The contract modules that every package shares import no vllm, torch or fastapi, so
the light core (data tools, client, CLI) installs and runs without them.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

LAYERS = ["clients", "service", "eval", "training", "intentlm"]
CONTRACTS = [
    "service.intents",
    "service.prompt",
    "service.modelcard",
    "service.scope",
    "service.dataset",
    "service.errors",
]
HEAVY = ("vllm", "torch", "fastapi", "transformers")


def modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The modules ``path`` imports (``from a.b import c`` counts as ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_package_imports_one_above_it() -> None:
    upward = []
    for name, path in modules().items():
        rank = LAYERS.index(name.split(".")[0])
        for imported in imports(path):
            top = imported.split(".")[0]
            if top in LAYERS and LAYERS.index(top) > rank:
                upward.append(f"{name} imports {imported}")
    assert not upward


def test_no_import_cycle_between_modules() -> None:
    """Module-level imports of our own modules form no cycle (a function-level import is how a module defers a
    heavy dependency, and is left out of the graph)."""
    found = modules()
    graph = {name: {i for i in imports(path, top_level_only=True) if i in found} for name, path in found.items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        assert name not in stack, " -> ".join([*stack[stack.index(name) :], name])
        if name in done:
            return
        for imported in graph[name]:
            visit(imported, [*stack, name])
        done.add(name)

    for name in graph:
        visit(name, [])


def test_contract_modules_import_nothing_heavy() -> None:
    found = modules()
    for name in CONTRACTS:
        heavy = {i for i in imports(found[name]) if i.split(".")[0] in HEAVY}
        assert not heavy, f"{name} imports {heavy}"
