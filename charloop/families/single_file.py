"""Single-file checkpoints (one ``.safetensors``, as most community SD1.5/SDXL bases ship):
converted once into a diffusers folder that every stage then loads like any other.

diffusers' ``from_single_file`` needs the architecture's configs: a local diffusers folder
of the same family (``base_model.config``), else it fetches the family's default configs
from the hub. The converted folder is keyed by the checkpoint's content hash, so an edited
file converts again and an unchanged one never does.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from charloop.core import atomic
from charloop.core.errors import BadInput
from charloop.core.hashing import sha256_file
from charloop.families import get_family

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
CONVERTED_DIR = ".charloop/converted"
"""Converted checkpoints, under the project root."""


class SingleFileError(BadInput, ValueError):
    """A single-file checkpoint that cannot be loaded as declared (exit 2)."""


def is_single_file(ref: str) -> bool:
    """Whether ``ref`` names a checkpoint file rather than a folder or hub id."""
    return Path(ref).suffix in CHECKPOINT_SUFFIXES and Path(ref).is_file()


@lru_cache(maxsize=8)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)[:16]


def converted_folder(checkpoint: str, family: str, config: str | None, root: Path) -> Path:
    """The diffusers folder of ``checkpoint``, converting it on first use.

    Args:
        checkpoint: The ``.safetensors`` / ``.ckpt`` file.
        family: The declared family ('auto' cannot read a single file).
        config: A local diffusers folder (or hub id) with the architecture's configs.
        root: The project root (conversions live under ``.charloop/converted``).

    Raises:
        SingleFileError: no declared family, or diffusers cannot build the pipeline
            (no config given and none reachable, or a checkpoint of another family).
    """
    if family == "auto":
        raise SingleFileError(
            f"base_model.path {checkpoint} is a single-file checkpoint: its family cannot be "
            "read from it; declare base_model.family (sd15 or sdxl)"
        )
    stat = Path(checkpoint).stat()
    key = _content_key(checkpoint, stat.st_size, stat.st_mtime_ns)
    folder = root / CONVERTED_DIR / f"{family}-{key}"
    if (folder / "model_index.json").is_file():
        return folder
    spec = get_family(family)
    logger.info("converting %s (%s) into %s", checkpoint, family, folder)
    kwargs: dict[str, Any] = dict(spec.load_kwargs())
    if config is not None:
        kwargs["config"] = config
    try:
        pipe = spec.pipeline_type().from_single_file(checkpoint, **kwargs)
    except Exception as exc:
        where = f"base_model.config {config}" if config else "no base_model.config"
        raise SingleFileError(
            f"cannot load {checkpoint} as a {family} checkpoint with {where}: "
            f"{str(exc).splitlines()[0][:300]}. Point base_model.config at a local diffusers "
            f"folder of an {family} base (model_index.json and each component's config), "
            f"and check the file is an {family} checkpoint"
        ) from None
    with atomic.staged_dir(folder) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
    return folder


def base_model_ref(project: Any, path: str | None = None) -> str:
    """The folder or hub id the stages load the base model from: ``base_model.path``
    resolved (or ``path``, e.g. a registry tag), a single-file checkpoint converted."""
    spec = project.params.base_model
    ref = project.model_ref(path or spec.path)
    if not is_single_file(ref):
        return ref
    config = project.model_ref(spec.config) if spec.config else None
    return str(converted_folder(ref, spec.family, config, project.root))
