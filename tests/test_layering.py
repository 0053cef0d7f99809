"""Imports flow one way: charloop_cli -> flows -> tasks -> charloop (never prefect)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

FORBIDDEN = {
    "charloop": {"prefect", "flows", "tasks", "charloop_cli"},
    "tasks": {"flows", "charloop_cli"},
    "flows": {"charloop_cli"},
}


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


def test_library_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (REPO / "charloop").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 300} == {}


def test_no_print_in_library_code():
    for path in (REPO / "charloop").rglob("*.py"):
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
        ]
        assert not calls, path
