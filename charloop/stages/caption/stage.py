"""Caption: a kohya-style training folder, trigger first, then the context tags.

Layout of the dataset folder::

    <repeats>_<trigger-slug>/<id>.png   the kept image
    <repeats>_<trigger-slug>/<id>.txt   its caption
    metadata.jsonl                      {"file_name", "text"} rows for diffusers' imagefolder
    manifest.jsonl                      generation rows of the kept images, each with its
                                        review record (automatic and final decision, who
                                        decided) and caption
    dataset.toml                        kohya sd-scripts dataset config (keep_tokens keeps
                                        the triggers first if a trainer shuffles tags)

A cast gets one subset folder per scene kind: ``<repeats>_<trigger>`` for each character
alone and ``<repeats>_<trigger>_and_<trigger>`` for joint scenes, every caption starting with
the triggers of the characters present. With ``caption.include_references`` each character's
reference images go in a ``<repeats>_<trigger>_references`` subset (ids ``ref-<name>-<file>``),
captioned with the trigger, the traits (``include_traits``) and the tags of a ``<stem>.txt``
file beside the image, if any.

Captions are never shuffled here: the trigger is always the first tag.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from charloop.core import atomic
from charloop.core.hashing import sha256_file, tree_digest
from charloop.params.project import Project
from charloop.params.schema import AXES, CaptionParams, Character, Params
from charloop.scenes.heldout import redact, refuse_leaks
from charloop.stages.caption.references import ReferenceEntry, reference_entries
from charloop.stages.contract import StageIdentity, identity
from charloop.stages.results import Dataset, Generated, Reviewed

logger = logging.getLogger(__name__)


def caption_tags(
    characters: Character | list[Character], context: dict[str, str], rules: CaptionParams
) -> list[str]:
    """Tags for one image: the triggers of the characters in it always first (in scene
    order), then their traits (optional) and the context."""
    present = [characters] if isinstance(characters, Character) else characters
    tags = [c.trigger for c in present]
    if rules.include_traits:
        tags.extend(trait for c in present for trait in c.traits)
    tags.extend(context[axis] for axis in AXES if context.get(axis))
    return tags


def caption_text(
    characters: Character | list[Character],
    context: dict[str, str],
    rules: CaptionParams,
    description: str = "",
) -> str:
    """The caption line written to ``<id>.txt``: tags, then the model's description if any."""
    tags = caption_tags(characters, context, rules)
    return rules.separator.join([*tags, description] if description else tags)


def reference_caption(member: Character, sidecar: list[str], rules: CaptionParams) -> str:
    """A reference image's caption: trigger, traits (optional), then its sidecar's tags."""
    return rules.separator.join([*caption_tags(member, {}, rules), *sidecar])


def kohya_dataset_toml(subsets: dict[str, tuple[int, int]], resolution: int) -> str:
    """A kohya sd-scripts dataset config: one subset per folder, its triggers protected.

    Args:
        subsets: Folder name -> (how many leading tags are triggers (``keep_tokens``),
            ``num_repeats``).
        resolution: Training resolution.
    """
    lines = [
        "[general]",
        'caption_extension = ".txt"',
        "shuffle_caption = false",
        "",
        "[[datasets]]",
        f"resolution = {resolution}",
    ]
    for folder, (keep, repeats) in subsets.items():
        lines += [
            "",
            "  [[datasets.subsets]]",
            f'  image_dir = "{folder}"',
            f"  num_repeats = {repeats}",
            f"  keep_tokens = {keep}  # the triggers never move when shuffle_caption is on",
        ]
    return "\n".join([*lines, ""])


def common_word_tokens(tokenizer: Any, trigger: str) -> list[str]:
    """Words of the trigger that the tokenizer keeps whole: common words the base model
    already associates with something, so the LoRA must fight that prior.

    CLIP's BPE splits rare strings ('zxq') into pieces; a word that is one whole-word
    token ('fox</w>') is in the vocabulary as a word.
    """
    common = []
    for word in re.findall(r"[A-Za-z]+", trigger):
        tokens = tokenizer.tokenize(word.lower())
        if len(word) >= 3 and tokens == [f"{word.lower()}</w>"]:
            common.append(word)
    return common


def subset_folder(trigger: str, repeats: int) -> str:
    """Kohya subset folder name: ``<repeats>_<trigger with unsafe characters replaced>``."""
    return f"{repeats}_{re.sub(r'[^A-Za-z0-9_-]+', '_', trigger).strip('_')}"


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
) -> StageIdentity[Dataset]:
    """Everything that determines the dataset (``references``: already listed, or None)."""
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
        references=[(m.name, f.name, sha256_file(f), tags) for m, f, tags in refs],
    )


def run_caption(
    project: Project, generated: Generated, selected: Reviewed, out_dir: str | Path
) -> Dataset:
    """Copy the selected images (the review stage's ``kept.jsonl``) into a captioned dataset.

    Args:
        project: Validated params and root.
        generated: The generate stage (image files).
        selected: The review stage (which images, with their decision records).
        out_dir: Dataset folder, written atomically.
    """
    params = project.params
    captioner = params.caption.captioner
    captioner_ref = project.model_ref(captioner.path) if captioner.type == "vlm" else None
    references = reference_entries(project)
    stage = caption_identity(project, generated, selected, out_dir, references)
    out_dir = Path(out_dir)
    if done := stage.done():
        logger.info("caption: reusing %s", out_dir)
        return done
    kept = atomic.read_jsonl(Path(selected.path) / "kept.jsonl")
    files = [Path(generated.path) / row["file"] for row in kept]
    descriptions, redacted = _redacted(params, _describe(project, captioner_ref, files))
    tokenizer = _tokenizer(project)
    common = sorted({w for m in params.members for w in common_word_tokens(tokenizer, m.trigger)})
    if common:
        logger.warning(
            "triggers %s tokenize into common words %s: prefer a rare token sequence "
            "(e.g. 'zxq kira') so the LoRA does not fight the base model's prior",
            [m.trigger for m in params.members],
            common,
        )
    subsets: dict[str, tuple[int, int]] = {}
    repeats, ref_repeats = params.caption.repeats, params.caption.reference_repeats
    with atomic.staged_dir(out_dir) as staging:
        metadata: list[dict[str, Any]] = []
        manifest: list[dict[str, Any]] = []
        for row, description in zip(kept, descriptions, strict=True):
            present = [params.member(n) for n in row.get("characters") or [params.subject]]
            folder = subset_folder(" and ".join(m.trigger for m in present), repeats)
            if folder not in subsets:
                (staging / folder).mkdir()
                subsets[folder] = (len(present), repeats)
            text = caption_text(present, row["context"], params.caption, description)
            image_name = f"{folder}/{row['file']}"
            shutil.copyfile(Path(generated.path) / row["file"], staging / image_name)
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
            manifest.append(row | {"caption": text, "description": description})
        for member, source, sidecar in references:
            folder = subset_folder(f"{member.trigger} references", ref_repeats)
            if folder not in subsets:
                (staging / folder).mkdir()
                subsets[folder] = (1, ref_repeats)
            row_id = f"ref-{member.name}-{source.stem}"
            text = reference_caption(member, sidecar, params.caption)
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
            manifest.append({"id": row_id, "reference": project.portable(source), "caption": text})
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
        )
    logger.info("caption: %d captioned images in %s", len(metadata), out_dir)
    return output


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


def _tokenizer(project: Project) -> Any:
    """The base model's tokenizer (loaded on its own: no UNet or VAE needed)."""
    from transformers import CLIPTokenizer

    spec = project.params.base_model
    ref = project.model_ref(spec.path)
    return CLIPTokenizer.from_pretrained(
        ref, subfolder="tokenizer", revision=spec.revision or "main"
    )
