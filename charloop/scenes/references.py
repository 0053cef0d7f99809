"""Reference images: read what can be read, and say why the rest was skipped."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from charloop.core.errors import BadInput

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class NoUsableReferences(BadInput, FileNotFoundError):
    """A references folder is set but not one image in it can be read."""


@dataclass
class ReferenceSet:
    """Loaded reference images and the files that were skipped, with reasons."""

    images: list[Image.Image] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def open_image(path: Path) -> Image.Image:
    """Decode an image fully (so truncated files fail here, not later) as RGB.

    Raises:
        OSError: unreadable, truncated, not an image, or so large that decoding it
            could exhaust memory (PIL's decompression-bomb limit).
    """
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.convert("RGB")
    except UnidentifiedImageError as exc:
        raise OSError(f"not an image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise OSError(f"too large to decode safely ({exc})") from None


def load_references(folder: Path | None) -> ReferenceSet:
    """Every readable image in ``folder`` (sorted by name); other files are skipped.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NoUsableReferences: ``folder`` holds no readable image (a set references folder
            never silently means "no references").
    """
    refs = ReferenceSet()
    if folder is None:
        return refs
    if not folder.is_dir():
        raise FileNotFoundError(f"character.references folder {folder} does not exist")
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            refs.skipped[path.name] = f"not an image file type ({path.suffix or 'no suffix'})"
            continue
        try:
            refs.images.append(open_image(path))
            refs.files.append(path.name)
        except OSError as exc:
            refs.skipped[path.name] = f"unreadable: {exc}"
    for name, reason in refs.skipped.items():
        # Sidecar files (notes, identity.json) are expected; an unreadable image is not.
        level = logging.WARNING if reason.startswith("unreadable") else logging.DEBUG
        logger.log(level, "reference %s skipped: %s", name, reason)
    if not refs.images:
        why = "; ".join(f"{n}: {r}" for n, r in refs.skipped.items()) or "it is empty"
        raise NoUsableReferences(
            f"character.references folder {folder} holds no readable image ({why}); add "
            "PNG/JPEG/WebP images of the character or unset references"
        )
    return refs
