"""The captions a dataset will hold, known before any image, checked for held-out leaks.

Generated images are captioned from their context values, the triggers and the traits;
references from the triggers, the traits and their ``.txt`` sidecars. Both are known from
the params and the reference folders alone, so ``charloop validate`` and the loop's
preflight find a leak (see :mod:`charloop.scenes.heldout`) before the first image.
"""

from __future__ import annotations

from charloop.params.project import Project
from charloop.scenes.heldout import Leak, find_leaks, refuse_leaks
from charloop.stages.caption.references import reference_entries
from charloop.stages.caption.stage import caption_text, reference_caption


def planned_captions(project: Project) -> list[tuple[str, str]]:
    """``(where, text)`` for every caption part the dataset can hold."""
    params = project.params
    rules = params.caption
    captions = [("the triggers and traits", caption_text(params.members, {}, rules))]
    for axis, values in params.contexts.axis_values().items():
        captions += [(f"contexts ({axis} {value!r})", value) for value in values if value]
    for member, image, sidecar in reference_entries(project):
        source = image.with_suffix(".txt") if sidecar else image
        where = f"the caption of reference {project.portable(source)}"
        captions.append((where, reference_caption(member, sidecar, params)))
    return captions


def held_out_leaks(project: Project) -> list[Leak]:
    """Every evaluation context or claimed-unseen value the training captions contain."""
    return find_leaks(project.params, planned_captions(project))


def check_held_out(project: Project) -> None:
    """Raise :class:`~charloop.scenes.heldout.HeldOutLeak` when any caption leaks."""
    refuse_leaks(project.params, planned_captions(project))
