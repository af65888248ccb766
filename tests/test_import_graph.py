"""The import graph of the project's own modules, read statically (imports inside functions
count: a deferred import is still a dependency). Packages import one way, search_spaces ←
predictors ← compress ← nas, and the cycles that remain are listed here so the list can only
shrink (issue #12 names them)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "predictors", "compress", "nas")
LAYER = {name: rank for rank, name in enumerate(PACKAGES)}

# Each remaining cycle as the sorted modules of its strongly connected component.
KNOWN_CYCLES = {
    ("nas.artifacts.export", "nas.artifacts.model_card"),
    ("search_spaces.block_strings", "search_spaces.spec"),
    # get_space's deferred import of the registering package; each registered space joins it
    ("search_spaces.space", "search_spaces.spaces", "search_spaces.spaces.mnasnet", "search_spaces.spaces.nb201",
     "search_spaces.spaces.proxyless"),
    ("compress", "compress.prune", "compress.prune_search"),  # modules importing their package's re-exports
}


def module_names() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
    return targets


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(tuple(sorted(component)))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_packages_import_only_downwards() -> None:
    upward = [f"{source} -> {target}" for source, targets in graph().items() for target in targets
              if LAYER[target.split(".")[0]] > LAYER[source.split(".")[0]]]
    assert upward == []


def test_no_import_cycle_beyond_the_known_ones() -> None:
    assert cycles(graph()) <= KNOWN_CYCLES


def test_the_cycle_finder_sees_a_deferred_import() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == {("a", "b")}
