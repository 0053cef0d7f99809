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
        output = seal("caption", staging, out_dir, fp, {"images": len(metadata)})
    logger.info("caption: %d captioned images in %s", len(metadata), out_dir)
    return output
