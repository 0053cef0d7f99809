"""Caption: a kohya-style training folder, trigger first, then the context tags.

Layout of the dataset folder::

    <repeats>_<trigger-slug>/<id>.png   the kept image
    <repeats>_<trigger-slug>/<id>.txt   its caption
    metadata.jsonl                      {"file_name", "text"} rows for diffusers' imagefolder
    manifest.jsonl                      the generation rows of the kept images
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


def caption_text(character: Character, context: dict[str, str], rules: CaptionParams) -> str:
    """The caption line written to ``<id>.txt``."""
    return rules.separator.join(caption_tags(character, context, rules))


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
    project: Project, generated: StageOutput, filtered: StageOutput, out_dir: str | Path
) -> StageOutput:
    """Copy kept images into a captioned dataset folder."""
    params = project.params
    fp = fingerprint(
        "caption",
        rules=params.caption.model_dump(),
        character=params.character.model_dump(),
        generated=generated.digest,
        filtered=filtered.digest,
    )
    out_dir = Path(out_dir)
    if done := completed(out_dir, fp):
        logger.info("caption: reusing %s", out_dir)
        return done
    kept = atomic.read_jsonl(Path(filtered.path) / "kept.jsonl")
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
        for row in kept:
            text = caption_text(params.character, row["context"], params.caption)
            image_name = f"{folder}/{row['file']}"
            shutil.copyfile(Path(generated.path) / row["file"], staging / image_name)
            (staging / folder / f"{row['id']}.txt").write_text(text + "\n", encoding="utf-8")
            metadata.append({"file_name": image_name, "text": text, "id": row["id"]})
        atomic.write_jsonl(staging / "metadata.jsonl", metadata)
        atomic.write_jsonl(staging / "manifest.jsonl", kept)
        summary = {"images": len(metadata), "trigger_common_words": common}
        output = seal("caption", staging, out_dir, fp, summary)
    logger.info("caption: %d captioned images in %s", len(metadata), out_dir)
    return output


def _tokenizer(project: Project) -> Any:
    """The base model's tokenizer (loaded on its own: no UNet or VAE needed)."""
    from transformers import CLIPTokenizer

    spec = project.params.base_model
    ref = project.model_ref(spec.path)
    return CLIPTokenizer.from_pretrained(
        ref, subfolder="tokenizer", revision=spec.revision or "main"
    )
