"""Hash checks of a registered adapter's files: every file a user can load is verified.

An adapter ships two files, the diffusers LoRA and its kohya twin; the registry records the
sha256 of each (``adapter_sha256``, ``kohya_sha256``). Promotion, release, checkout and
``charloop generate`` refuse an adapter whose files do not match.
"""

from __future__ import annotations

from pathlib import Path

from charloop.core.hashing import sha256_file
from charloop.stages.layout import ADAPTER_FILE_TAGS


def adapter_file_problems(folder: Path, tags: dict[str, str]) -> list[str]:
    """What does not match between ``folder``'s adapter files and the registry ``tags``.

    A version registered before a file's hash was recorded (no tag) is not checked for
    that file; every recorded hash must match.
    """
    problems = []
    for name, tag in ADAPTER_FILE_TAGS.items():
        expected = tags.get(tag)
        if expected is None and tag != "adapter_sha256":
            continue
        path = folder / name
        actual = sha256_file(path) if path.is_file() else "missing"
        if actual != expected:
            problems.append(
                f"{name}: sha256 {actual[:12]} does not match the registry's {str(expected)[:12]}"
            )
    return problems
