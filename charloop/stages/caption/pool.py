"""Which generated images a round's dataset holds: this iteration's, or the best so far.

With ``caption.dataset: {policy: accumulate}`` every iteration's dataset draws from the
images of every iteration of its round: the previous dataset's generated images (itself
the best of the iterations before) plus what this iteration's filter and review kept.
They are ranked against the references (a person's explicit keep first, then the
filter's identity score, then the newer image), at most ``per_context`` per scene context
so no context dominates, and at most ``max_images`` in all. Earlier images compete only
when they score at least the weakest image this iteration's filter kept (``older:
as_good``): the bar rises with the LoRA, so an earlier round's weaker pictures leave while
its best stay until newer ones of their context score higher. Within a context an image
whose edge layout repeats one already chosen (``max_layout_similarity``) is passed over,
so the data keeps poses and framings varied rather than feeding one picture back. Each
dataset draws on its predecessor, itself the best of the iterations before.

Scores are comparable across iterations when the identity filter scores against the
character's references (the same anchor every time). Without references each iteration's
anchor is its own batch's most cohesive cluster, so an earlier score and a newer one are
measured from different places and the ranking across iterations is approximate: give
the character references for an accumulating dataset.

With ``{policy: iteration}`` a dataset holds only its own iteration's kept images.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charloop.core import atomic
from charloop.params.caption import AccumulatePolicy, DatasetPolicy
from charloop.scenes.prompts import context_id


@dataclass(frozen=True)
class PoolImage:
    """One generated image that may go into the dataset."""

    row: dict[str, Any]
    """Its generation manifest row (with its ``review`` record)."""
    source: Path
    """The file to copy."""

    @property
    def iteration(self) -> int:
        return int(self.row.get("iteration") or 0)

    @property
    def scene(self) -> str:
        """The per-context cap's key: who is in it and its context combination."""
        characters = "+".join(self.row.get("characters") or [])
        return f"{characters}|{context_id(self.row.get('context') or {})}"


def identity_score(row: dict[str, Any]) -> float | None:
    """The filter's identity score of a row (a cast scene: the mean over its characters)."""
    scores = (row.get("review") or {}).get("scores") or {}
    if "identity" in scores:
        return float(scores["identity"])
    own = [float(v) for k, v in scores.items() if k.startswith("identity:")]
    return sum(own) / len(own) if own else None


def rank_key(image: PoolImage) -> tuple[bool, float, int, str]:
    """Best first when sorted descending: a person's keep, the identity score, the newer
    iteration (made by a later LoRA), then the id for a stable order."""
    score = identity_score(image.row)
    score_key = float("-inf") if score is None else score
    return (by_person(image), score_key, image.iteration, image.row["id"])


def by_person(image: PoolImage) -> bool:
    """A person kept it in review (it competes whatever its score)."""
    return str((image.row.get("review") or {}).get("decided_by", "")).startswith("human:")


def select(
    pool: list[PoolImage],
    policy: AccumulatePolicy,
    layouts: dict[str, np.ndarray] | None = None,
) -> list[PoolImage]:
    """The best ``per_context`` images of each scene, at most ``max_images`` in all.

    Args:
        pool: The candidates.
        policy: The caps and the layout rule.
        layouts: Unit edge-layout vector by image id (``max_layout_similarity``), if any.

    Returns:
        The chosen images, oldest iteration first, then by id (a stable dataset order).
    """
    ranked = sorted(pool, key=rank_key, reverse=True)
    chosen_by_scene: dict[str, list[np.ndarray]] = {}
    chosen: list[PoolImage] = []
    seen: set[str] = set()
    limit = policy.max_layout_similarity
    for image in ranked:
        scene = chosen_by_scene.setdefault(image.scene, [])
        if len(scene) >= policy.per_context or image.row["id"] in seen:
            continue
        layout = layouts.get(image.row["id"]) if layouts else None
        if layout is not None and limit is not None and any(layout @ o > limit for o in scene):
            continue  # the same pose and framing as a better image of this scene
        scene.append(layout if layout is not None else np.zeros(1))
        seen.add(image.row["id"])
        chosen.append(image)
    if policy.max_images is not None:
        chosen = chosen[: policy.max_images]
    return sorted(chosen, key=lambda i: (i.iteration, i.row["id"]))


def previous_images(dataset_dir: Path) -> list[PoolImage]:
    """The generated (not reference) images of an earlier dataset, with their rows."""
    rows = atomic.read_jsonl(dataset_dir / "manifest.jsonl")
    return [
        PoolImage(_without_dataset_fields(row), dataset_dir / row["dataset_file"])
        for row in rows
        if "reference" not in row
    ]


def _without_dataset_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A dataset manifest row back as a generation row (the caption is written anew)."""
    return {
        k: v
        for k, v in row.items()
        if k not in ("caption", "description", "dataset_file", "freed_axes")
    }


def dataset_images(
    policy: DatasetPolicy,
    kept: list[dict[str, Any]],
    generated_dir: Path,
    previous_dataset: Path | None,
) -> list[PoolImage]:
    """The generated images of this iteration's dataset under ``policy``.

    Args:
        policy: ``caption.dataset``.
        kept: This iteration's kept rows (the review stage's ``kept.jsonl``).
        generated_dir: Where this iteration's images are.
        previous_dataset: The previous iteration's dataset folder in this round, if any.
    """
    fresh = [PoolImage(row, generated_dir / row["file"]) for row in kept]
    if policy.policy == "iteration":
        return fresh
    earlier = previous_images(previous_dataset) if previous_dataset is not None else []
    if policy.older == "as_good":
        earlier = admitted(earlier, fresh)
    pool = earlier + fresh
    layouts = None
    if policy.max_layout_similarity is not None:
        from charloop.core.image_layout import layout_features
        from charloop.scenes.references import open_image

        features = layout_features([open_image(image.source) for image in pool])
        layouts = {image.row["id"]: vector for image, vector in zip(pool, features, strict=True)}
    return select(pool, policy, layouts)


def admitted(earlier: list[PoolImage], fresh: list[PoolImage]) -> list[PoolImage]:
    """The earlier images scoring at least the weakest fresh image the filter kept (and
    those a person kept); all of them when the fresh images carry no identity score."""
    bar = [s for i in fresh if not by_person(i) and (s := identity_score(i.row)) is not None]
    if not bar:
        return earlier
    weakest = min(bar)
    return [
        i
        for i in earlier
        if by_person(i) or ((s := identity_score(i.row)) is not None and s >= weakest)
    ]


def sources(images: list[PoolImage]) -> dict[str, int]:
    """How many images each iteration contributed, by iteration number (as text keys)."""
    counts = Counter(str(image.iteration) for image in images)
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))
