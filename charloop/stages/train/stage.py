"""Train: a peft LoRA on the UNet (and optionally the text encoder), run through accelerate.

Latents and text embeddings come from an on-disk cache keyed by content (see
:mod:`charloop.models.encode_cache`), so a dataset image is VAE-encoded once across steps,
iterations and runs. Outputs: the diffusers-format LoRA, the same LoRA in kohya format,
``train_log.json`` (loss, learning rate and validation loss per step) and provenance.
Works under ``accelerate launch`` with several processes (only the main one writes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from charloop.core import atomic
from charloop.core.hashing import sha256_file
from charloop.families.single_file import base_model_ref
from charloop.models.memory_budget import render_offload
from charloop.models.pipeline import load_pipeline, resolve_device
from charloop.params.project import MEMORY_PLACEMENT_FIELDS, Project
from charloop.params.train import TrainParams
from charloop.stages.contract import StageIdentity, identity, read_output
from charloop.stages.layout import TRAIN_LOG
from charloop.stages.results import Adapter, Dataset
from charloop.stages.train.adapter import (
    WEIGHTS_NAME,
    AdapterState,
    Fit,
    base_spec,
    fit,
    log_record,
    save_adapter,
    train_summary,
)
from charloop.stages.train.cast import train_members
from charloop.stages.train.checkpoint import Checkpointer
from charloop.stages.train.data import read_rows
from charloop.stages.train.kohya import KOHYA_WEIGHTS_NAME
from charloop.stages.train.loop import TrainingDiverged, checkpoint_root
from charloop.stages.train.models import build_models, make_accelerator
from charloop.stages.train.modelspec import BaseSpec
from charloop.stages.train.trigger_embedding import starting_text

__all__ = [
    "WEIGHTS_NAME",
    "AdapterState",
    "TrainingDiverged",
    "build_models",
    "make_accelerator",
    "run_train",
    "save_adapter",
    "train_identity",
]

logger = logging.getLogger(__name__)


_PLACEMENT: dict[str, Any] = {
    "cache_dir": True,
    "checkpoint_every": True,
    "candidates": True,  # how many LoRAs an iteration trains, not what one of them is
    "memory": set(MEMORY_PLACEMENT_FIELDS),
}
"""Train fields that change where things go, not the LoRA (see ``params_hash``)."""


def train_identity(
    project: Project, dataset: Dataset, out_dir: str | Path, provenance: dict[str, str]
) -> StageIdentity[Adapter]:
    """Everything that determines the adapter (provenance included: it is in the headers)."""
    params = project.params
    return identity(
        Adapter,
        out_dir,
        __name__,
        train=params.train.model_dump(exclude=_PLACEMENT),
        base=project.portable_ref(params.base_model.path),
        resolution=params.generate.resolution,
        dataset=dataset.digest,
        provenance=provenance,
        cast=params.cast.model_dump(include={"lora", "adapter_weights"}) if params.cast else None,
        # The trigger's vectors start from the traits, which the references can change.
        trigger_start=starting_text(project) if params.train.trigger_embedding.enabled else None,
    )


def run_train(
    project: Project,
    dataset: Dataset,
    out_dir: str | Path,
    provenance: dict[str, str],
    stop_after: int | None = None,
) -> Adapter:
    """Train the LoRA on a captioned dataset folder (resuming from a checkpoint if any).

    A cast with ``cast.lora: per_character`` trains one LoRA per member instead (see
    :mod:`charloop.stages.train.cast`).

    Args:
        project: Validated params and root.
        dataset: The caption stage's output.
        out_dir: Adapter folder, written atomically by the main process.
        provenance: Lineage facts stored in the headers and beside the weights
            (:func:`charloop.lineage.provenance.build_provenance`).
        stop_after: Stop with TrainingInterrupted after this step (crash simulation).
    """
    params = project.params
    tp = params.train
    stage = train_identity(project, dataset, out_dir, provenance)
    if done := stage.done():
        logger.info("train: reusing %s", out_dir)
        return done
    base_ref = base_model_ref(project)  # encoding may need the same offload as rendering
    pipe = load_pipeline(base_ref, params.base_model, render_offload(params, base_ref))
    rows = read_rows(Path(dataset.path))
    accelerator = make_accelerator(tp, resolve_device(params.base_model.device))
    if params.cast is not None and params.cast.lora == "per_character":
        return train_members(project, pipe, accelerator, dataset, rows, stage, provenance)
    checkpoints = Checkpointer(
        checkpoint_root(stage.out_dir, stage.fingerprint), tp.checkpoint_every
    )
    result = fit(project, pipe, accelerator, Path(dataset.path), rows, checkpoints, stop_after)
    if accelerator.is_main_process:
        output = _write(accelerator, result, stage, tp, provenance, base_spec(project, pipe))
        checkpoints.clear()
    accelerator.wait_for_everyone()
    return output if accelerator.is_main_process else read_output(stage.out_dir, Adapter)


def _write(
    accelerator: Any,
    result: Fit,
    stage: StageIdentity[Adapter],
    tp: TrainParams,
    provenance: dict[str, str],
    spec: BaseSpec,
) -> Adapter:
    with atomic.staged_dir(stage.out_dir) as staging:
        weights = save_adapter(accelerator, result.models, staging, tp, dict(provenance), spec)
        atomic.write_json(staging / TRAIN_LOG, log_record(result.log))
        output = stage.seal(
            staging,
            **train_summary(result, accelerator.num_processes),
            weights_sha256=sha256_file(weights),
            kohya_sha256=sha256_file(staging / KOHYA_WEIGHTS_NAME),
        )
    logger.info("train: %d steps, final loss %.4f", output.steps, output.final_loss)
    return output
