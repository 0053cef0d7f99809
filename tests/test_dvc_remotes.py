"""Every lineage stays restorable whichever params file ran last: one named remote each."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

from charloop.lineage import versioning


def _version(root: Path, name: str, remote: str) -> tuple[str, str]:
    """What a loop with ``dvc.remote: remote`` does: add the remote, track, push."""
    versioning.ensure_repo(root, remote)
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_text(f"adapter of {name}")
    md5 = versioning.track([folder])[str(folder)]
    url = versioning.remote_url(root, remote)
    assert versioning.push([folder], versioning.remote_name(url)) >= 1
    return md5, url


def test_two_params_files_keep_their_own_remotes_and_both_restore(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    default_md5, default_url = _version(tmp_path, "kira", ".charloop/dvc-remote")
    tiny_md5, tiny_url = _version(tmp_path, "tiny", "examples/.charloop/dvc-remote")

    config = configparser.ConfigParser()
    config.read(tmp_path / ".dvc" / "config.local")
    urls = {config[s]["url"] for s in config.sections() if s.startswith("'remote")}
    # the second run added, did not repoint; both relative to .dvc/, so the project moves
    assert urls == {"../.charloop/dvc-remote", "../examples/.charloop/dvc-remote"}
    default_name = versioning.remote_name(default_url)
    assert config["core"]["remote"] == default_name  # the first remote stays the default

    shutil.rmtree(tmp_path / ".dvc" / "cache")  # only the remotes hold the data now
    restored = versioning.restore(default_md5, tmp_path / "out" / "kira", default_url)
    assert (restored / "weights.bin").read_text() == "adapter of kira"
    restored = versioning.restore(tiny_md5, tmp_path / "out" / "tiny", tiny_url)
    assert (restored / "weights.bin").read_text() == "adapter of tiny"


def test_a_moved_project_restores_from_its_own_remote(tmp_path):
    project = tmp_path / "studio"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    md5, _ = _version(project, "kira", ".charloop/dvc-remote")
    moved = tmp_path / "elsewhere" / "studio"
    shutil.copytree(project, moved)
    shutil.rmtree(project)  # the old place is gone
    shutil.rmtree(moved / ".dvc" / "cache")
    url = versioning.remote_url(moved, ".charloop/dvc-remote")
    restored = versioning.restore(md5, moved / "out" / "kira", url)
    assert (restored / "weights.bin").read_text() == "adapter of kira"
