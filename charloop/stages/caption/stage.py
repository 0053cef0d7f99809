"""Caption: a kohya-style training folder, trigger first, then the context tags.

Layout of the dataset folder::

    <repeats>_<trigger-slug>/<id>.png   the kept image
    <repeats>_<trigger-slug>/<id>.txt   its caption
    metadata.jsonl                      {"file_name", "text"} rows for diffusers' imagefolder
    manifest.jsonl                      generation rows of the dataset's images, each with
                                        the iteration that made it, its source file, its
                                        review record (automatic and final decision, who
                                        decided, scores), caption and dataset file
    dataset.toml                        kohya sd-scripts dataset config (keep_tokens keeps
                                        the triggers first if a trainer shuffles tags)

A cast gets one subset folder per scene kind: ``<repeats>_<trigger>`` for each character
alone and ``<repeats>_<trigger>_and_<trigger>`` for joint scenes, every caption starting with
the triggers of the characters present. With ``caption.include_references`` each character's
reference images go in a ``<repeats>_<trigger>_references`` subset (ids ``ref-<name>-<file>``),
captioned with the trigger, the traits (``include_traits``) and the tags of a ``<stem>.txt``
file beside the image, if any.

Which generated images go in is ``caption.dataset`` (see :mod:`.pool`): by default the
best of every iteration of the round so far, so a dataset needs the previous one.

Captions are never shuffled here: the trigger is always the first tag.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from charloop.core import atomic
from charloop.core.hashing import sha256_file, tree_digest
from charloop.params.project import Project
from charloop.params.schema import AXES, CaptionParams, Character, Params
from charloop.scenes.heldout import redact, refuse_leaks
from charloop.stages.caption.folder import (
    common_word_tokens,
    kohya_dataset_toml,
    subset_folder,
    trigger_tokenizer,
)
from charloop.stages.caption.free import plan_freed, tag_values, without_values
from charloop.stages.caption.pool import dataset_images, sources
from charloop.stages.caption.references import ReferenceEntry, reference_entries, reference_id
from charloop.stages.contract import StageIdentity, identity
from charloop.stages.results import Dataset, Generated, Reviewed

logger = logging.getLogger(__name__)


def caption_tags(
    characters: Character | list[Character],
    context: dict[str, str],
    rules: CaptionParams,
    freed: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """Tags for one image: the triggers of the characters in it always first (in scene
    order), then their traits (optional) and the context, less the ``freed`` axes."""
    present = [characters] if isinstance(characters, Character) else characters
    tags = [c.trigger for c in present]
    if rules.include_traits:
        tags.extend(trait for c in present for trait in c.traits)
    tags.extend(context[axis] for axis in AXES if context.get(axis) and axis not in freed)
    return tags


def caption_text(
    characters: Character | list[Character],
    context: dict[str, str],
    rules: CaptionParams,
    description: str = "",
    freed: list[str] | tuple[str, ...] = (),
) -> str:
    """The caption line written to ``<id>.txt``: tags, then the model's description if any."""
    tags = caption_tags(characters, context, rules, freed)
    return rules.separator.join([*tags, description] if description else tags)


def reference_caption(
    member: Character, sidecar: list[str], params: Params, freed: list[str] | tuple[str, ...] = ()
) -> str:
    """A reference image's caption: trigger, traits (optional), then its sidecar's tags
    (less those naming a value of a ``freed`` axis)."""
    rules = params.caption
    tags = without_values(sidecar, list(freed), params.contexts.axis_values())
    return rules.separator.join([*caption_tags(member, {}, rules), *tags])


def training_data_digest(dataset_dir: str | Path) -> str:
    """sha256 of what a trainer reads: the subset folders' images and captions (their paths
    carry the repeats and triggers). The manifest, metadata, kohya config and stage marker
    are bookkeeping and left out: identical training data has an identical digest however
    and wherever it was made."""
    return tree_digest(dataset_dir, subfolders_only=True)


def caption_identity(
    project: Project,
    generated: Generated,
    selected: Reviewed,
    out_dir: str | Path,
    references: list[ReferenceEntry] | None = None,
    previous: Dataset | None = None,
) -> StageIdentity[Dataset]:
    """Everything that determines the dataset (``references``: already listed, or None;
    ``previous``: the round's previous dataset, which an accumulating policy draws from)."""
    params = project.params
    captioner = params.caption.captioner
    refs = reference_entries(project) if references is None else references
    return identity(
        Dataset,
        out_dir,
        __name__,
        rules=params.caption.model_dump(),
        captioner=project.portable_ref(captioner.path) if captioner.type == "vlm" else None,
        characters=[m.model_dump() for m in params.members],
        cast=params.cast.model_dump() if params.cast else None,
        resolution=params.generate.resolution,
        generated=generated.digest,
        selected=selected.digest,
        previous=previous.digest if previous and _accumulates(params) else None,
        references=[(m.name, f.name, sha256_file(f), tags) for m, f, tags in refs],
    )


def _accumulates(params: Params) -> bool:
    return params.caption.dataset.policy == "accumulate"


def run_caption(
    project: Project,
    generated: Generated,
    selected: Reviewed,
    out_dir: str | Path,
    previous: Dataset | None = None,
) -> Dataset:
    """Copy the dataset's images (per ``caption.dataset``) into a captioned dataset folder.

    Args:
        project: Validated params and root.
        generated: The generate stage (image files).
        selected: The review stage (which images, with their decision records).
        out_dir: Dataset folder, written atomically.
        previous: The previous dataset of the same round (None on a round's first
            iteration); an accumulating policy ranks its images with the new ones.
    """
    params = project.params
    captioner = params.caption.captioner
    captioner_ref = project.model_ref(captioner.path) if captioner.type == "vlm" else None
    references = reference_entries(project)
    stage = caption_identity(project, generated, selected, out_dir, references, previous)
    out_dir = Path(out_dir)
    if done := stage.done():
        logger.info("caption: reusing %s", out_dir)
        return done
    kept_rows = atomic.read_jsonl(Path(selected.path) / "kept.jsonl")
    earlier = Path(previous.path) if previous else None
    images = dataset_images(params.caption.dataset, kept_rows, Path(generated.path), earlier)
    kept = [image.row for image in images]
    files = [image.source for image in images]
    descriptions, redacted = _redacted(params, _describe(project, captioner_ref, files))
    tokenizer = trigger_tokenizer(project)
    common = sorted({w for m in params.members for w in common_word_tokens(tokenizer, m.trigger)})
    if common:
        logger.warning(
            "triggers %s tokenize into common words %s: prefer a rare token sequence "
            "(e.g. 'zxq kira') so the LoRA does not fight the base model's prior",
            [m.trigger for m in params.members],
            common,
        )
    free = _freed(params, kept, references)
    subsets: dict[str, tuple[int, int]] = {}
    repeats, ref_repeats = params.caption.repeats, params.caption.reference_repeats
    with atomic.staged_dir(out_dir) as staging:
        metadata: list[dict[str, Any]] = []
        manifest: list[dict[str, Any]] = []
        for row, source, description in zip(kept, files, descriptions, strict=True):
            present = [params.member(n) for n in row.get("characters") or [params.subject]]
            folder = subset_folder(" and ".join(m.trigger for m in present), repeats)
            if folder not in subsets:
                (staging / folder).mkdir()
                subsets[folder] = (len(present), repeats)
            freed = free[row["id"]]
            text = caption_text(present, row["context"], params.caption, description, freed)
            image_name = f"{folder}/{row['file']}"
            shutil.copyfile(source, staging / image_name)
            (staging / folder / f"{row['id']}.txt").write_text(text + "\n", encoding="utf-8")
            metadata.append(
                {
                    "file_name": image_name,
                    "text": text,
                    "id": row["id"],
                    "characters": [m.name for m in present],
                    "repeats": repeats,
                }
            )
            origin = row.get("source") or project.portable(source)
            manifest.append(
                row
                | {"source": origin, "dataset_file": image_name}
                | {"caption": text, "description": description, "freed_axes": freed}
            )
        for member, source, sidecar in references:
            folder = subset_folder(f"{member.trigger} references", ref_repeats)
            if folder not in subsets:
                (staging / folder).mkdir()
                subsets[folder] = (1, ref_repeats)
            row_id = reference_id(member, source)
            freed = free[row_id]
            text = reference_caption(member, sidecar, params, freed)
            image_name = f"{folder}/{row_id}{source.suffix.lower()}"
            shutil.copyfile(source, staging / image_name)
            (staging / folder / f"{row_id}.txt").write_text(text + "\n", encoding="utf-8")
            metadata.append(
                {
                    "file_name": image_name,
                    "text": text,
                    "id": row_id,
                    "characters": [member.name],
                    "repeats": ref_repeats,
                }
            )
            reference = project.portable(source)
            manifest.append(
                {"id": row_id, "reference": reference, "caption": text, "freed_axes": freed}
            )
        # Held out means held out: a caption naming an evaluation context is refused.
        refuse_leaks(params, [(row["file_name"], row["text"]) for row in metadata])
        atomic.write_jsonl(staging / "metadata.jsonl", metadata)
        atomic.write_jsonl(staging / "manifest.jsonl", manifest)
        toml = kohya_dataset_toml(subsets, params.generate.resolution)
        (staging / "dataset.toml").write_text(toml, encoding="utf-8")
        output = stage.seal(
            staging,
            images=len(metadata),
            references=sum(1 for r in manifest if "reference" in r),
            trigger_common_words=common,
            captioner=params.caption.captioner.type,
            held_out_words_cut=redacted,
            sources=sources(images),
        )
    logger.info("caption: %d captioned images in %s", len(metadata), out_dir)
    return output


def _freed(
    params: Params, kept: list[dict[str, Any]], references: list[ReferenceEntry]
) -> dict[str, list[str]]:
    """The axes each image's caption leaves out (``caption.leave_free``), by image id."""
    values = params.contexts.axis_values()
    items = [(row["id"], "generated", row["context"]) for row in kept]
    items += [
        (reference_id(member, source), "reference", tag_values(sidecar, values))
        for member, source, sidecar in references
    ]
    return plan_freed(items, params.caption.leave_free)


def _redacted(params: Params, descriptions: list[str]) -> tuple[list[str], int]:
    """The descriptions with held-out words cut (see ``redact``), and how many were cut."""
    out, cut = [], 0
    for text in descriptions:
        clean, removed = redact(params, text)
        out.append(clean)
        cut += len(removed)
    if cut:
        logger.warning("caption: cut %d held-out word(s) from the model's descriptions", cut)
    return out, cut


def _describe(project: Project, captioner_ref: str | None, files: list[Path]) -> list[str]:
    """The VLM's description of each file, or empty strings with the template captioner."""
    spec = project.params.caption.captioner
    if captioner_ref is None or spec.type != "vlm":
        return [""] * len(files)
    from charloop.scenes.references import open_image
    from charloop.stages.caption.captioner import load_captioner

    return load_captioner(spec, captioner_ref).describe([open_image(f) for f in files])
