"""Caption: a kohya-style training folder, trigger first, then the context tags.

Layout of the dataset folder::

    <repeats>_<trigger-slug>/<id>.png   the kept image
    <repeats>_<trigger-slug>/<id>.txt   its caption
    metadata.jsonl                      {"file_name", "text"} rows for diffusers' imagefolder
    manifest.jsonl                      generation rows of the kept images, each with its
                                        review record (automatic and final decision, who
                                        decided) and caption
    dataset.toml                        kohya sd-scripts dataset config (keep_tokens=1 keeps
                                        the trigger first if a trainer shuffles tags)

Captions are never shuffled here: the trigger is always the first tag.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from charloop import atomic
from charloop.config import Project
from charloop.params import AXES, CaptionParams, Character
from charloop.stage import StageOutput, completed, fingerprint, seal

logger = logging.getLogger(__name__)


def caption_tags(character: Character, context: dict[str, str], rules: CaptionParams) -> list[str]:
    """Tags for one image: the trigger always first, then traits (optional) and context."""
    tags = [character.trigger]
    if rules.include_traits:
        tags.extend(character.traits)
    tags.extend(context[axis] for axis in AXES if context.get(axis))
    return tags


def caption_text(
    character: Character,
    context: dict[str, str],
    rules: CaptionParams,
    description: str = "",
) -> str:
    """The caption line written to ``<id>.txt``: tags, then the model's description if any."""
    tags = caption_tags(character, context, rules)
    return rules.separator.join([*tags, description] if description else tags)


def kohya_dataset_toml(folder: str, repeats: int, resolution: int) -> str:
    """A kohya sd-scripts dataset config for the subset folder, trigger protected."""
    return "\n".join(
        [
            "[general]",
            'caption_extension = ".txt"',
            "keep_tokens = 1  # the trigger (first tag) never moves when shuffle_caption is on",
            "shuffle_caption = false",
            "",
            "[[datasets]]",
            f"resolution = {resolution}",
            "",
            "  [[datasets.subsets]]",
            f'  image_dir = "{folder}"',
            f"  num_repeats = {repeats}",
            "",
        ]
    )


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


def run_caption(
    project: Project, generated: StageOutput, selected: StageOutput, out_dir: str | Path
) -> StageOutput:
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
    fp = fingerprint(
        "caption",
        rules=params.caption.model_dump(),
        captioner=captioner_ref,
        character=params.character.model_dump(),
        resolution=params.generate.resolution,
        generated=generated.digest,
        selected=selected.digest,
    )
    out_dir = Path(out_dir)
    if done := completed(out_dir, fp):
        logger.info("caption: reusing %s", out_dir)
        return done
    kept = atomic.read_jsonl(Path(selected.path) / "kept.jsonl")
    files = [Path(generated.path) / row["file"] for row in kept]
    descriptions = _describe(project, captioner_ref, files)
    common = common_word_tokens(_tokenizer(project), params.character.trigger)
    if common:
        logger.warning(
            "trigger %r tokenizes into common words %s: prefer a rare token sequence "
            "(e.g. 'zxq kira') so the LoRA does not fight the base model's prior",
            params.character.trigger,
            common,
        )
    folder = subset_folder(params.character.trigger, params.caption.repeats)
    with atomic.staged_dir(out_dir) as staging:
        (staging / folder).mkdir()
        metadata: list[dict[str, Any]] = []
        manifest: list[dict[str, Any]] = []
        for row, description in zip(kept, descriptions, strict=True):
            text = caption_text(params.character, row["context"], params.caption, description)
            image_name = f"{folder}/{row['file']}"
            shutil.copyfile(Path(generated.path) / row["file"], staging / image_name)
            (staging / folder / f"{row['id']}.txt").write_text(text + "\n", encoding="utf-8")
            metadata.append({"file_name": image_name, "text": text, "id": row["id"]})
            manifest.append(row | {"caption": text, "description": description})
        atomic.write_jsonl(staging / "metadata.jsonl", metadata)
        atomic.write_jsonl(staging / "manifest.jsonl", manifest)
        toml = kohya_dataset_toml(folder, params.caption.repeats, params.generate.resolution)
        (staging / "dataset.toml").write_text(toml, encoding="utf-8")
        summary = {
            "images": len(metadata),
            "trigger_common_words": common,
            "captioner": params.caption.captioner.type,
        }
        output = seal("caption", staging, out_dir, fp, summary)
    logger.info("caption: %d captioned images in %s", len(metadata), out_dir)
    return output


def _describe(project: Project, captioner_ref: str | None, files: list[Path]) -> list[str]:
    """The VLM's description of each file, or empty strings with the template captioner."""
    spec = project.params.caption.captioner
    if captioner_ref is None or spec.type != "vlm":
        return [""] * len(files)
    from charloop.captioner import load_captioner
    from charloop.references import open_image

    return load_captioner(spec, captioner_ref).describe([open_image(f) for f in files])


def _tokenizer(project: Project) -> Any:
    """The base model's tokenizer (loaded on its own: no UNet or VAE needed)."""
    from transformers import CLIPTokenizer

    spec = project.params.base_model
    ref = project.model_ref(spec.path)
    return CLIPTokenizer.from_pretrained(
        ref, subfolder="tokenizer", revision=spec.revision or "main"
    )
