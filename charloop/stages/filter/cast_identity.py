"""Identity checks for casts: each character against its own anchor, and identity blend.

A joint scene is cut into one vertical strip per character. With a side-by-side layout
strip ``i`` belongs to the ``i``-th character of the scene; without a layout the strips are
matched to characters by the assignment with the highest total similarity. A strip that
resembles another character of the scene more than its own is an identity blend: the
image is rejected with that reason, because training on it teaches one trigger the other
character's looks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from charloop.params.filter import IdentityCheck
from charloop.scenes.strips import assign_strips, strips
from charloop.stages.filter.discriminators import (
    Decision,
    anchor_similarity,
    apply_threshold,
    identity_anchor,
)

Embed = Callable[[list[Image.Image]], np.ndarray]


def blend_reasons(
    similarity: np.ndarray, members: list[str], assignment: list[int]
) -> tuple[list[str], dict[str, float]]:
    """Blend reasons and each character's own-strip similarity for one joint scene."""
    reasons = []
    scores = {}
    places = (
        ["left", "right"] if len(members) == 2 else [f"strip {i + 1}" for i in range(len(members))]
    )
    for strip, own in enumerate(assignment):
        own_score = float(similarity[strip, own])
        scores[f"identity:{members[own]}"] = own_score
        for other, name in enumerate(members):
            if other != own and similarity[strip, other] > own_score:
                reasons.append(
                    f"identity blend: the {places[strip]} character ({members[own]}) resembles "
                    f"{name} ({similarity[strip, other]:.3f}) more than {members[own]} "
                    f"({own_score:.3f})"
                )
    return reasons, scores


def cast_identity(
    decisions: list[Decision],
    characters: dict[str, list[str]],
    images: dict[str, Image.Image],
    embeddings: np.ndarray,
    references: dict[str, np.ndarray | None],
    rule: IdentityCheck,
    embed: Embed,
    laid_out: bool,
) -> dict[str, object]:
    """Apply the identity discriminator per character, then the blend check to joint scenes.

    Args:
        decisions: Readable images' decisions (rows of ``embeddings``, same order).
        characters: Image id -> names of the characters in it (scene order).
        images: Decoded images by id.
        embeddings: Whole-image embeddings of ``decisions``.
        references: Each character's reference embeddings, or None (anchor from its solo
            images' most cohesive cluster).
        rule: The identity discriminator's thresholds.
        embed: Embeds a list of images (the filter's embedder, batched).
        laid_out: Joint scenes were generated side by side.

    Returns:
        Facts per character (how its anchor was chosen) and the number of blends.
    """
    anchors: dict[str, np.ndarray] = {}
    facts: dict[str, object] = {}
    for name, refs in references.items():
        rows = [i for i, d in enumerate(decisions) if characters[d.id] == [name]]
        if not rows and refs is None:
            continue
        anchor, facts[name] = identity_anchor(embeddings[rows], refs, rule)
        anchors[name] = anchor
        if rows:
            solo = [decisions[i] for i in rows]
            similarity = anchor_similarity(embeddings[rows], refs, anchor, rule)
            apply_threshold(solo, similarity, "identity", rule)
    blends = 0
    for decision in decisions:
        members = characters[decision.id]
        if len(members) < 2:
            continue
        missing = [m for m in members if m not in anchors]
        if missing:
            decision.reasons.append(f"no identity anchor for {missing} (no solo image, no refs)")
            continue
        pieces = embed(strips(images[decision.id], len(members)))
        similarity = pieces @ np.stack([anchors[m] for m in members]).T
        reasons, scores = blend_reasons(similarity, members, assign_strips(similarity, laid_out))
        decision.scores.update(scores)
        if rule.min_similarity is not None:
            reasons += [
                f"{key} {value:.4f} < {rule.min_similarity}"
                for key, value in scores.items()
                if value < rule.min_similarity
            ]
        blends += any(r.startswith("identity blend") for r in reasons)
        decision.reasons.extend(reasons)
    return {"members": facts, "blends": blends}
