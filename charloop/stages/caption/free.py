"""Which context tags a caption leaves out (``caption.leave_free``).

For each freed axis, the images naming each of its values are ranked by a hash of the
image id and the axis, and the first ``share`` of them (rounded) leave that tag out;
references and generated images are counted apart, since a reference is drawn
``reference_repeats`` times. So the untagged captions hold the dataset's own mix of values
(half smiling and half serious when the dataset is), not whichever images a coin picked,
and the LoRA learns that mix for prompts that leave the axis out. No random draw: the same
dataset is captioned the same in every rerun and export.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from charloop.params.caption import LeaveFree

Item = tuple[str, str, dict[str, str]]
"""An image to caption: its id, its kind ('generated' or 'reference'), and its value of
each context axis it names."""


def plan_freed(items: list[Item], rules: LeaveFree) -> dict[str, list[str]]:
    """The axes whose tag each image's caption leaves out, by image id (``rules.axes``
    order)."""
    freed: dict[str, list[str]] = {image_id: [] for image_id, _, _ in items}
    for axis in rules.axes:
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for image_id, kind, values in items:
            if values.get(axis):
                groups[(kind, values[axis])].append(image_id)
        for ids in groups.values():
            ranked = sorted(ids, key=lambda i: _draw(f"{axis}\0{i}"))
            for image_id in ranked[: round(rules.share * len(ranked))]:
                freed[image_id].append(axis)
    return freed


def _draw(key: str) -> float:
    """A uniform number in [0, 1) fixed by ``key``."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def tag_values(tags: list[str], values: dict[str, list[str]]) -> dict[str, str]:
    """The context value each axis has among ``tags`` (a reference's sidecar tags).

    Args:
        tags: Tags as written (``"smiling"``, ``"in a forest"``...).
        values: The generation matrix's values per axis (``Contexts.axis_values``).
    """
    return {axis: tag for axis, known in values.items() for tag in tags if tag and tag in known}


def without_values(tags: list[str], freed: list[str], values: dict[str, list[str]]) -> list[str]:
    """``tags`` less those naming a value of a freed axis."""
    drop = {value for axis in freed for value in values.get(axis, []) if value}
    return [tag for tag in tags if tag not in drop]
