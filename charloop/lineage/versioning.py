"""DVC versioning of iteration folders, and the git commit of the code that made them.

All DVC calls go through one process at a time: DVC holds one lock per repository.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

REMOTE_NAME = "charloop"


def is_git_repo(root: Path) -> bool:
    """True when ``root`` is inside a git work tree."""
    result = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == "true"


def git_commit(root: Path) -> str:
    """HEAD's commit, suffixed '-dirty' when tracked files differ; 'none' outside git."""
    if not is_git_repo(root):
        return "none"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return "none"  # a repository without commits yet
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, check=False)
    return head.stdout.strip() + ("-dirty" if dirty.returncode else "")


def _git_toplevel(root: Path) -> Path:
    out = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip()).resolve()


def dvc_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding a ``.dvc`` directory."""
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def covering_root(root: Path, *paths: Path) -> Path:
    """The folder a DVC repo needs to cover ``root`` (the params folder) and ``paths`` (the
    work folder, references): their common folder, so a params file in a subfolder with
    ``workdir: ../runs`` still versions its runs. Falls back to ``root`` when the only
    common folder is the filesystem root."""
    common = Path(os.path.commonpath([p.resolve() for p in (root, *paths)]))
    return common if len(common.parts) > 1 else root


def ensure_repo(root: Path, remote: str | None) -> Path:
    """Initialise DVC at ``root`` unless a DVC repo already covers it; set the default remote.

    Outside git the repo is initialised with ``--no-scm``. A relative ``remote`` folder is
    resolved against ``root``.
    """
    from dvc.repo import Repo

    existing = dvc_root(root)
    repo_root = existing or root
    if existing is None:
        in_git = is_git_repo(root)
        top = _git_toplevel(root) if in_git else None
        Repo.init(str(root), no_scm=not in_git, subdir=top is not None and top != root.resolve())
        logger.info("initialised DVC in %s", root)
    if remote:
        url = remote if "://" in remote else str((root / remote).resolve())
        if "://" not in remote:
            Path(url).mkdir(parents=True, exist_ok=True)
        with Repo(str(repo_root)) as repo, repo.config.edit("local") as config:
            config["remote"][REMOTE_NAME] = {"url": url}
            config["core"]["remote"] = REMOTE_NAME
    return repo_root


def track(paths: list[Path]) -> dict[str, str]:
    """``dvc add`` the folders and return each one's DVC md5 (``<md5>.dir`` for folders)."""
    from dvc.repo import Repo

    root = dvc_root(paths[0].resolve().parent)
    if root is None:
        raise RuntimeError(f"no DVC repository above {paths[0]}; run ensure_repo first")
    with Repo(str(root)) as repo:
        repo.add([str(p) for p in paths])
    return {str(p): recorded_md5(p) for p in paths}


def recorded_md5(path: Path) -> str:
    """The md5 that ``<path>.dvc`` records for the tracked folder or file."""
    meta = yaml.safe_load(Path(f"{path}.dvc").read_text())
    return str(meta["outs"][0]["md5"])


def push(paths: list[Path]) -> int:
    """Push the tracked folders' cache objects to the default remote; returns files pushed."""
    from dvc.repo import Repo

    root = dvc_root(paths[0].resolve().parent)
    with Repo(str(root)) as repo:
        return int(repo.push(targets=[f"{p}.dvc" for p in paths]))


def restore(md5: str, dest: Path) -> Path:
    """Materialise the DVC object ``md5`` (a file or a ``.dir``) at ``dest``.

    Served from the local cache, or fetched from the default remote when the cache lacks
    it. ``dest`` must lie inside the DVC repository; an existing ``dest`` is replaced.

    Raises:
        RuntimeError: no DVC repository above ``dest``.
    """
    from dvc.exceptions import CheckoutError
    from dvc.repo import Repo

    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    root = dvc_root(dest.parent)
    if root is None:
        raise RuntimeError(f"no DVC repository above {dest}")
    dvcfile = dest.parent / f"{dest.name}.dvc"
    dvcfile.write_text(yaml.safe_dump({"outs": [{"md5": md5, "path": dest.name, "hash": "md5"}]}))
    try:
        with Repo(str(root)) as repo:
            try:
                repo.checkout(targets=[str(dvcfile)], force=True)
            except CheckoutError:
                logger.info("dvc: %s not in the local cache; fetching from the remote", md5)
                repo.fetch(targets=[str(dvcfile)])
                repo.checkout(targets=[str(dvcfile)], force=True)
    finally:
        dvcfile.unlink(missing_ok=True)
    return dest
