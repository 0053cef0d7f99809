"""The reference images a dataset includes (``caption.include_references``), with the tags
of their ``.txt`` sidecars."""

from __future__ import annotations

from pathlib import Path

from charloop.params.project import Project
from charloop.params.schema import Character
from charloop.stages.layout import REFERENCE_ID_PREFIX

ReferenceEntry = tuple[Character, Path, list[str]]
"""A reference image of a character, with the tags of its ``.txt`` sidecar."""


def reference_id(member: Character, source: Path) -> str:
    """A reference's dataset row id: ``ref-<character>-<file stem>``."""
    return f"{REFERENCE_ID_PREFIX}{member.name}-{source.stem}"


def reference_entries(project: Project) -> list[ReferenceEntry]:
    """The references the dataset includes (``caption.include_references``), listed once."""
    return [(m, f, sidecar_tags(f)) for m, f in reference_files(project)]


def reference_files(project: Project) -> list[tuple[Character, Path]]:
    """Each character's readable reference images, with ``caption.include_references``."""
    if not project.params.caption.include_references:
        return []
    from charloop.scenes.references import load_references

    out = []
    for member in project.params.members:
        folder = project.resolve(member.references) if member.references else None
        out += [(member, folder / name) for name in load_references(folder).files if folder]
    return out


def sidecar_tags(image: Path) -> list[str]:
    """Tags from a kohya-style caption file beside a reference image (``<stem>.txt``): the
    art's context, so its captions read like the generated images' (trigger, traits,
    context) and the context tags do not come to mean "not the character"."""
    sidecar = image.with_suffix(".txt")
    if not sidecar.is_file():
        return []
    return [t.strip() for t in sidecar.read_text(encoding="utf-8").split(",") if t.strip()]
