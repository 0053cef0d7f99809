"""The library's own import graph, read from the sources (no import is executed).

A stage's cache fingerprint covers the code that stage runs: the modules its entry module
imports, directly or through other charloop modules (imports inside functions included),
plus the package ``__init__`` files Python executes on the way. ``dvc.yaml``'s code deps
are written from the same closure, and the layering tests read the graph for cycles.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

ROOT_PACKAGE = "charloop"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
"""The folder of the ``charloop`` package."""


def module_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source file of a ``charloop...`` module or package, or None if there is none."""
    parts = module.split(".")
    if parts[0] != package_dir.name:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, package_dir: Path) -> str:
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The ``charloop`` modules that the file at ``path`` imports, anywhere in its body."""
    root = package_dir.name
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = _module_name(path, package_dir)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == root)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative import
                anchor = this.split(".")
                if path.name != "__init__.py":
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                module = ".".join([*anchor, module] if module else anchor)
            if module.split(".")[0] != root:
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if module_path(sub, package_dir) else module)
    return {m for m in found if module_path(m, package_dir) is not None}


def _with_parents(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: the packages Python initialises first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@functools.cache
def closure(module: str, package_dir: Path = PACKAGE_DIR) -> tuple[Path, ...]:
    """Every source file that importing ``module`` can execute, sorted.

    Raises:
        ModuleNotFoundError: ``module`` is not a module of the package.
    """
    if module_path(module, package_dir) is None:
        raise ModuleNotFoundError(f"{module} is not a module of {package_dir}")
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for name in _with_parents(current):
            if name in seen:
                continue
            seen.add(name)
            path = module_path(name, package_dir)
            if path is not None:
                todo.extend(imports_of(path, package_dir))
    paths = {module_path(m, package_dir) for m in seen}
    return tuple(sorted(p for p in paths if p is not None))


@functools.cache
def code_fingerprint(module: str, package_dir: Path = PACKAGE_DIR) -> str:
    """Digest of the sources in ``closure(module)``: a stage's code identity.

    Computed once per process: the code a process runs is the code it imported, whatever
    happens to the files afterwards.
    """
    digest = hashlib.sha256()
    for path in closure(module, package_dir):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Module -> the charloop modules it imports, for every module of the package."""
    return {
        _module_name(path, package_dir): imports_of(path, package_dir)
        for path in sorted(package_dir.rglob("*.py"))
    }
