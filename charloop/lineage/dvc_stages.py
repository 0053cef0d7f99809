"""``dvc.yaml``'s code deps, written from the same import closure as the stage fingerprints.

A DVC stage reruns when a file in its deps changes, and a loop stage reruns when its
fingerprint's code part changes. Both come from :func:`charloop.core.codegraph.closure` of
the stage's entry modules, so ``dvc repro`` and ``charloop run`` agree on what code a stage
depends on. A package whose every module is in the closure is listed as its folder.
``charloop stage deps --write`` rewrites the deps; a test checks the shipped file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charloop.core.codegraph import PACKAGE_DIR, closure

DVC_STAGE_CODE: dict[str, tuple[str, ...]] = {
    "generate": ("charloop.stages.generate.stage",),
    "filter": ("charloop.stages.filter.stage",),
    "review": ("charloop.stages.review.stage",),
    "caption": ("charloop.stages.caption.stage",),
    # `charloop stage train` builds the provenance the headers carry and, with
    # train.candidates > 1, evaluates each candidate to pick one.
    "train": ("charloop.lineage.candidates", "charloop.lineage.provenance"),
    "evaluate": ("charloop.stages.evaluate.stage",),
    "log": (
        "charloop.lineage.registry",
        "charloop.lineage.provenance",
        "charloop.lineage.versioning",
        "charloop.lineage.reports",
    ),
}
"""Each ``dvc.yaml`` stage's entry modules (what its ``charloop stage`` command runs)."""


def code_deps(stage: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The repo-relative code deps of DVC stage ``stage``, folders for whole packages."""
    files = {p for module in DVC_STAGE_CODE[stage] for p in closure(module, package_dir)}
    repo = package_dir.parent
    deps: set[Path] = set(files)
    for folder in sorted({p.parent for p in files}, key=lambda p: len(p.parts)):
        if all(p in files for p in folder.rglob("*.py")):
            deps = {p for p in deps if folder not in p.parents and p != folder} | {folder}
    # A folder inside an already listed folder is covered by it.
    listed = sorted(deps, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in listed:
        if not any(k in path.parents for k in kept):
            kept.append(path)
    return sorted(p.relative_to(repo).as_posix() for p in kept)


def _is_code(dep: str, package_dir: Path) -> bool:
    return dep == package_dir.name or dep.startswith(package_dir.name + "/")


def stale_deps(dvc_yaml: dict[str, Any], package_dir: Path = PACKAGE_DIR) -> dict[str, list[str]]:
    """Stages whose code deps differ from their closure, with the deps they should have."""
    stale = {}
    for name, stage in dvc_yaml.get("stages", {}).items():
        if name not in DVC_STAGE_CODE:
            continue
        have = sorted(d for d in stage.get("deps", []) if _is_code(d, package_dir))
        want = code_deps(name, package_dir)
        if have != want:
            stale[name] = want
    return stale


def write_deps(path: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Rewrite the code deps of ``dvc.yaml`` at ``path`` in place (comments kept).

    Returns:
        The names of the stages that changed.
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long cmd line
    yaml.indent(mapping=2, sequence=4, offset=2)
    data = yaml.load(path.read_text(encoding="utf-8"))
    stale = stale_deps(data, package_dir)
    for name, want in stale.items():
        deps = data["stages"][name]["deps"]
        others = [d for d in deps if not _is_code(str(d), package_dir)]
        deps.clear()
        deps.extend([*want, *others])
    if stale:
        tmp = path.with_suffix(".yaml.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            yaml.dump(data, handle)
        tmp.replace(path)
    return sorted(stale)
