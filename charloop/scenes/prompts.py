"""Prompt matrix over the context axes, prompt rendering and deterministic seeds."""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from typing import Any

from charloop.params.schema import AXES, Character, Contexts, Params

Context = dict[str, str]
"""One value per axis, keyed by the singular axis names in ``AXES``."""


def context_matrix(
    contexts: Contexts, max_prompts: int | None, seed: int, field: str = "generate.max_prompts"
) -> list[Context]:
    """Context combinations to render: the full product, or a covering sample.

    A capped sample first takes ``max(len(axis))`` "diagonal" combinations, so that every
    value of every axis appears at least once, then fills up from a seeded shuffle of the
    rest. The result is deterministic for a given seed.

    Raises:
        ValueError: ``max_prompts`` is too small to cover the largest axis.
    """
    values = contexts.axis_values()
    product = [dict(zip(AXES, combo, strict=True)) for combo in itertools.product(*values.values())]
    if max_prompts is None or max_prompts >= len(product):
        return product
    widest = max(len(v) for v in values.values())
    if max_prompts < widest:
        raise ValueError(
            f"{field}={max_prompts} cannot cover an axis with {widest} values; "
            f"set it to at least {widest}"
        )
    diagonal = [{axis: values[axis][i % len(values[axis])] for axis in AXES} for i in range(widest)]
    rest = [combo for combo in product if combo not in diagonal]
    random.Random(seed).shuffle(rest)
    return diagonal + rest[: max_prompts - widest]


def render_prompt(
    template: str, character: Character, context: Context, trigger: bool = True
) -> str:
    """Fill the template; empty placeholders and their separators disappear.

    Args:
        template: Prompt template with ``{trigger}``, ``{traits}``, ``{description}`` and axes.
        character: The character (trigger, traits, description).
        context: One value per axis; missing axes render empty.
        trigger: Include the trigger phrase (False gives the class-prior prompt).
    """
    fields = {axis: context.get(axis, "") for axis in AXES}
    fields["trigger"] = character.trigger if trigger else ""
    fields["traits"] = ", ".join(character.traits)
    fields["description"] = character.description
    text = template.format(**fields)
    parts = [part.strip() for part in re.split(r"\s*,\s*", text)]
    return ", ".join(part for part in parts if part)


SIDE_BY_SIDE = ("on the left", "on the right")
"""Where each member of a side-by-side joint scene stands, in member order."""


def scene_prompt(
    template: str,
    members: list[Character],
    context: Context,
    trigger: bool = True,
    layout: str = "none",
) -> str:
    """The prompt for a solo scene (one member) or a joint scene (two or more).

    A joint scene names every member's trigger (with its place when ``layout`` is
    'side_by_side') in the ``{trigger}`` slot and leaves ``{traits}`` and ``{description}``
    empty: listing both characters' traits in one prompt is what makes identities blend.
    Without the trigger a joint scene is 'two characters' (the class-prior prompt).
    """
    if len(members) == 1:
        return render_prompt(template, members[0], context, trigger)
    places = SIDE_BY_SIDE if layout == "side_by_side" and len(members) == 2 else None
    names = [m.trigger for m in members] if trigger else ["a character" for _ in members]
    if places:
        names = [f"{name} {place}" for name, place in zip(names, places, strict=True)]
    group = " and ".join(names) if trigger or places else f"{len(members)} characters"
    joint = Character(name="joint", trigger=group)
    return render_prompt(template, joint, context, trigger=True)


def scene_text(params: Params, row: dict[str, Any], trigger: bool = False) -> str:
    """The prompt of a manifest row's scene, by default without triggers (what prompt
    adherence compares the image with). Rows without ``characters`` are the single
    character's."""
    names = row.get("characters") or [params.subject]
    layout = params.cast.joint.layout if params.cast else "none"
    members = [params.member(name) for name in names]
    return scene_prompt(params.generate.prompt_template, members, row["context"], trigger, layout)


def context_id(context: Context) -> str:
    """Short stable id of a context combination (folder- and key-safe)."""
    joined = "|".join(context.get(axis, "") for axis in AXES)
    return hashlib.sha256(joined.encode()).hexdigest()[:8]


def derive_seed(*parts: object) -> int:
    """A 31-bit seed derived from any parts: same parts, same seed, in any process."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
