"""The kohya folder layout of a dataset and its trigger checks (pure helpers)."""

from __future__ import annotations

import re
from typing import Any

from charloop.params.project import Project


def subset_folder(trigger: str, repeats: int) -> str:
    """Kohya subset folder name: ``<repeats>_<trigger with unsafe characters replaced>``."""
    return f"{repeats}_{re.sub(r'[^A-Za-z0-9_-]+', '_', trigger).strip('_')}"


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


def trigger_tokenizer(project: Project) -> Any:
    """The base model's tokenizer (loaded on its own: no UNet or VAE needed)."""
    from transformers import CLIPTokenizer

    spec = project.params.base_model
    ref = project.model_ref(spec.path)
    return CLIPTokenizer.from_pretrained(
        ref, subfolder="tokenizer", revision=spec.revision or "main"
    )
