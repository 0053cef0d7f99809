"""Release: export a production adapter with a model card, and restore any version's data.

A release folder holds both LoRA formats, the evaluation contact sheet as the sample
grid, ``MODEL_CARD.md`` (trigger, base model, metrics, lineage, usage), and an
import-ready trio named after the model: ``<name>.safetensors`` (the kohya file, which
InvokeAI, ComfyUI, A1111/Forge and kohya tools load), ``<name>.json`` (the A1111
sidecar InvokeAI also reads on import: ``activation text`` becomes its trigger phrase,
``description`` its description) and ``<name>.png`` (the cover both show).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from PIL import Image

from charloop.core import atomic
from charloop.core.contact_sheet import first_tile
from charloop.core.errors import Refused
from charloop.core.hashing import tree_digest
from charloop.lineage.adapter_files import adapter_file_problems
from charloop.lineage.chain import LineageStep
from charloop.stages.contract import MARKER
from charloop.stages.layout import ADAPTER_WEIGHTS, KOHYA_WEIGHTS

logger = logging.getLogger(__name__)

CARD = "MODEL_CARD.md"
KEY_METRICS = (
    "identity_consistency",
    "base_identity_consistency",
    "prompt_fidelity",
    "nearest_train_similarity",
)


class RestoreError(Refused, RuntimeError):
    """Restored bytes do not match what the registry recorded."""


def model_card(name: str, steps: list[LineageStep], sample_grid: str | None) -> str:
    """Markdown model card for ``steps[0]`` with its lineage (newest first)."""
    head = steps[0]
    tags = head.tags
    lines = [
        f"# {name} v{head.version}",
        "",
        f"- trigger: `{tags.get('trigger', '?')}` (put it first in the prompt)",
        f"- base model: `{tags.get('base_model', '?')}`",
        f"- dataset: {tags.get('dataset_images', '?')} images, training data sha256 "
        f"`{tags.get('dataset_hash', '?')}`, DVC md5 `{tags.get('dataset_dvc_md5', '?')}`",
        f"- adapter sha256: `{tags.get('adapter_sha256', '?')}`",
        f"- params hash: `{tags.get('params_hash', '?')}`, code: `{tags.get('git_commit', '?')}`",
        f"- approved by: {tags.get('approved_by', '-')} ({tags.get('approved_at', '-')}): "
        f"{tags.get('promotion_reason', '')}",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {m} | {head.metrics[m]:.4f} |" for m in KEY_METRICS if m in head.metrics),
        "",
        "## Lineage",
        "",
        "| version | iteration | training data sha256 | images | identity | params changed |",
        "|---|---|---|---|---|---|",
    ]
    for step in steps:
        changed = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in step.changed_params.items())
        identity = step.metrics.get("identity_consistency")
        lines.append(
            f"| {step.version} | {step.iteration} | `{step.tags.get('dataset_hash', '?')[:16]}` | "
            f"{step.tags.get('dataset_images', '?')} | "
            f"{'-' if identity is None else f'{identity:.4f}'} | {changed or '-'} |"
        )
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        f"pipe.load_lora_weights('.', weight_name='{ADAPTER_WEIGHTS}')",
        "```",
        "",
        "A1111 / ComfyUI / InvokeAI: use `lora_kohya.safetensors`.",
    ]
    if sample_grid:
        lines += ["", "## Samples", "", f"![held-out contexts x seeds]({sample_grid})"]
    return "\n".join(lines) + "\n"


def export_release(
    release_root: Path,
    name: str,
    steps: list[LineageStep],
    adapter_dir: Path,
    sample_grid: Path | None,
) -> Path:
    """Write ``<release_root>/<name>/v<version>/`` atomically; returns the folder."""
    head = steps[0]
    final = release_root / name / f"v{head.version}"
    with atomic.staged_dir(final) as staging:
        for weights in sorted(adapter_dir.glob("*.safetensors")):
            shutil.copyfile(weights, staging / weights.name)
        grid = None
        if sample_grid is not None and sample_grid.is_file():
            shutil.copyfile(sample_grid, staging / "sample_grid.png")
            grid = "sample_grid.png"
            with Image.open(sample_grid) as sheet:
                first_tile(sheet).save(staging / f"{name}.png")
        (staging / CARD).write_text(model_card(name, steps, grid), encoding="utf-8")
        shutil.copyfile(adapter_dir / KOHYA_WEIGHTS, staging / f"{name}.safetensors")
        atomic.write_json(staging / f"{name}.json", sidecar(name, head))
    logger.info("release: %s", final)
    return final


def sidecar(name: str, head: LineageStep) -> dict[str, object]:
    """The ``<name>.json`` beside the release file (A1111's user-metadata keys)."""
    trigger = head.tags.get("trigger", "")
    return {
        "activation text": trigger,
        "description": f"{name} v{head.version}: charloop character LoRA; prompt with "
        f"'{trigger}' first (base {head.tags.get('base_model', '?')})",
        "notes": f"identity consistency {head.metrics.get('identity_consistency', 0):.4f}",
        "sd version": "SD1",
        "preferred weight": 0,
    }


def verify_restored(tags: dict[str, str], dataset: Path, adapter: Path) -> None:
    """Check restored folders against the registry's content digests.

    Raises:
        RestoreError: a digest differs.
    """
    dataset_digest = tree_digest(dataset, exclude=(MARKER,))
    if dataset_digest != tags.get("dataset_sha256"):
        raise RestoreError(
            f"dataset digest {dataset_digest[:12]} != registry {tags.get('dataset_sha256')}"
        )
    if problems := adapter_file_problems(adapter, tags):
        raise RestoreError("adapter " + "; ".join(problems))


def point_production(release_root: Path, name: str, version: str) -> Path:
    """Record which release folder is production (``<root>/<name>/PRODUCTION``)."""
    return atomic.write_text(release_root / name / "PRODUCTION", f"v{version}\n")
