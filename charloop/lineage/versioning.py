"""DVC versioning of iteration folders, and the git commit of the code that made them.

All DVC calls go through one process at a time: DVC holds one lock per repository.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

REMOTE_PREFIX = "charloop"


def remote_name(url: str) -> str:
    """The DVC remote name of ``url``: one named remote per remote location.

    Several params files (a character, a cast, the tiny example) can share one DVC repo
    with different remotes; each gets its own name, so running one never repoints
    another's, and every registered version records the name and URL it was pushed to.
    """
    return f"{REMOTE_PREFIX}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def remote_url(root: Path, remote: str) -> str:
    """A remote as written (a URL) or a folder resolved against ``root``."""
    return remote if "://" in remote else str((root / remote).resolve())


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
    """Initialise DVC at ``root`` unless a DVC repo already covers it; add ``remote``.

    Outside git the repo is initialised with ``--no-scm``. A relative ``remote`` folder is
    resolved against ``root``. The remote is added under :func:`remote_name` in
    ``.dvc/config.local``; it becomes the repo's default only when there is none yet (so a
    plain ``dvc push`` works), and other params files' remotes are left as they are.
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
        add_remote(repo_root, remote_url(root, remote))
    return repo_root


def add_remote(repo_root: Path, url: str) -> str:
    """Add ``url`` as a named remote of the repo at ``repo_root`` (idempotent); its name."""
    from dvc.repo import Repo

    name = remote_name(url)
    if "://" not in url:
        Path(url).mkdir(parents=True, exist_ok=True)
    from dvc.config_schema import RelPath

    written: str = url
    if "://" not in url and Path(url).resolve().is_relative_to(Path(repo_root).resolve()):
        # DVC writes a RelPath relative to .dvc/ and resolves it so on read: the project
        # (remote folder inside it) can be moved or copied
        written = RelPath(str(Path(url).resolve()))
    with Repo(str(repo_root)) as repo:
        merged = repo.config.load_one("repo")  # a default set in the committed config
        with repo.config.edit("local") as config:
            config["remote"][name] = {"url": written}
            default = config["core"].get("remote") or merged.get("core", {}).get("remote")
            if not default or default == REMOTE_PREFIX:  # the single shared name of old
                config["core"]["remote"] = name
    return name


def track(paths: list[Path]) -> dict[str, str]:
    """``dvc add`` the folders and return each one's DVC md5 (``<md5>.dir`` for folders)."""
    from dvc.repo import Repo

    root = dvc_root(paths[0].resolve().parent)
    if root is None:
        raise RuntimeError(f"no DVC repository above {paths[0]}; run ensure_repo first")
    with Repo(str(root)) as repo:
        repo.scm_context.quiet = True  # its "To track the changes with git" hint, per add
        repo.add([str(p) for p in paths])
    logger.info("dvc: tracked %d folder(s); commit their .dvc files with git", len(paths))
    return {str(p): recorded_md5(p) for p in paths}


def recorded_md5(path: Path) -> str:
    """The md5 that ``<path>.dvc`` records for the tracked folder or file."""
    meta = yaml.safe_load(Path(f"{path}.dvc").read_text())
    return str(meta["outs"][0]["md5"])


def push(paths: list[Path], remote: str | None = None) -> int:
    """Push the tracked folders' cache objects to ``remote`` (a name; None: the default
    remote); returns files pushed."""
    from dvc.repo import Repo

    root = dvc_root(paths[0].resolve().parent)
    with Repo(str(root)) as repo:
        return int(repo.push(targets=[f"{p}.dvc" for p in paths], remote=remote))


def restore(md5: str, dest: Path, remote: str | None = None) -> Path:
    """Materialise the DVC object ``md5`` (a file or a ``.dir``) at ``dest``.

    Served from the local cache, or fetched when the cache lacks it: from ``remote`` (the
    URL the version was pushed to, added as a named remote when missing), else from the
    default remote. ``dest`` must lie inside the DVC repository; an existing ``dest`` is
    replaced.

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
    name = add_remote(root, remote) if remote else None
    dvcfile = dest.parent / f"{dest.name}.dvc"
    dvcfile.write_text(yaml.safe_dump({"outs": [{"md5": md5, "path": dest.name, "hash": "md5"}]}))
    try:
        with Repo(str(root)) as repo:
            try:
                repo.checkout(targets=[str(dvcfile)], force=True)
            except CheckoutError:
                logger.info("dvc: %s not in the local cache; fetching from the remote", md5)
                repo.fetch(targets=[str(dvcfile)], remote=name)
                repo.checkout(targets=[str(dvcfile)], force=True)
    finally:
        dvcfile.unlink(missing_ok=True)
    return dest
