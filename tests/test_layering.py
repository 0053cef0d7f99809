"""The layout's rules, read from the sources: imports flow one way, no cycles, stages talk
only through typed results, and the product never imports the procedural world."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from charloop.core.codegraph import import_graph
from tests.conftest import REPO

FORBIDDEN = {
    "charloop": {"prefect", "flows", "tasks", "charloop_cli", "charloop_world"},
    "charloop_world": {"prefect", "flows", "tasks", "charloop_cli"},
    "tasks": {"flows", "charloop_cli", "charloop_world"},
    "flows": {"charloop_cli", "charloop_world"},
}

LAYERS = {
    "core": {"core"},
    "params": {"core", "params"},
    "families": {"core", "params", "families"},
    "models": {"core", "params", "families", "models"},
    "scenes": {"core", "params", "families", "models", "scenes"},
    "stages": {"core", "params", "families", "models", "scenes", "stages"},
    "lineage": {"core", "params", "families", "models", "scenes", "stages", "lineage"},
}
"""Which charloop subpackages each subpackage may import (lower layers, and itself)."""

STAGES = {"generate", "filter", "review", "caption", "train", "evaluate"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(package):
    offenders = {
        str(path.relative_to(REPO)): sorted(_imported_roots(path) & FORBIDDEN[package])
        for path in (REPO / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_library_subpackages_import_only_lower_layers():
    graph = import_graph()
    assert set(LAYERS) <= {_subpackage(m) for m in graph}
    offenders = {}
    for module, imported in graph.items():
        layer = _subpackage(module)
        if layer is None:
            continue
        bad = sorted(m for m in imported if (_subpackage(m) or "") not in LAYERS[layer])
        if bad:
            offenders[module] = bad
    assert offenders == {}


def test_stage_packages_never_import_each_other():
    """Stages meet only in ``stages.results`` (typed results) and ``stages.contract``."""
    offenders = {}
    for module, imported in import_graph().items():
        parts = module.split(".")
        if parts[:2] != ["charloop", "stages"] or len(parts) < 3 or parts[2] not in STAGES:
            continue
        others = {
            m
            for m in imported
            if m.split(".")[:2] == ["charloop", "stages"]
            and len(m.split(".")) > 2
            and m.split(".")[2] in STAGES - {parts[2]}
        }
        if others:
            offenders[module] = sorted(others)
    assert offenders == {}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_in_the_library():
    """Function-level imports count: a cycle hidden in a function is still a cycle."""
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["charloop", "charloop_world"])
def test_modules_stay_small(package):
    sizes = {
        str(p.relative_to(REPO)): len(p.read_text().splitlines())
        for p in (REPO / package).rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > 300} == {}


@pytest.mark.parametrize("package", ["charloop", "charloop_world"])
def test_no_print_in_library_code(package):
    for path in (REPO / package).rglob("*.py"):
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
        ]
        assert not calls, path
