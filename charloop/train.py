"""Train: a peft LoRA on the UNet (and optionally the text encoder), run through accelerate.

Latents and text embeddings come from an on-disk cache keyed by content (see
:mod:`charloop.encode_cache`), so a dataset image is VAE-encoded once across steps,
iterations and runs. Outputs: the diffusers-format LoRA, the same LoRA in kohya format,
``train_log.json`` (loss, learning rate and validation loss per step) and provenance.
Works under ``accelerate launch`` with several processes (only the main one writes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charloop import atomic
from charloop.config import Project
from charloop.encode_cache import EncodeCache
from charloop.eval_metrics import TRAIN_LOG
from charloop.hashing import sha256_file
from charloop.kohya import KOHYA_WEIGHTS_NAME, save_kohya
from charloop.layout import ADAPTER_WEIGHTS
from charloop.params_train import TrainParams
from charloop.pipeline import load_pipeline, resolve_device
from charloop.safetensors_header import canonicalize
from charloop.stage import StageOutput, completed, fingerprint, read_output, seal
from charloop.train_checkpoint import Checkpointer
from charloop.train_data import ModelIdentity, encode_rows, read_rows, split_validation
from charloop.train_loop import TrainingDiverged, TrainLog, TrainModels, checkpoint_root, train_lora
from charloop.train_models import build_models, make_accelerator

__all__ = [
    "WEIGHTS_NAME",
    "AdapterState",
    "TrainingDiverged",
    "build_models",
    "make_accelerator",
    "run_train",
    "save_adapter",
]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = ADAPTER_WEIGHTS


@dataclass
class AdapterState:
    """A trained LoRA as peft state dicts (``<module>.lora_A.weight`` keys) and configs."""

    unet: dict[str, Any]
    unet_config: dict[str, Any]
    text_encoder: dict[str, Any] | None = None
    text_encoder_config: dict[str, Any] | None = None


def adapter_state(accelerator: Any, models: TrainModels) -> AdapterState:
    """The LoRA layers of trained ``models``."""
    from peft.utils import get_peft_model_state_dict

    unet = accelerator.unwrap_model(models.unet)
    state = AdapterState(get_peft_model_state_dict(unet), unet.peft_config["default"].to_dict())
    if models.text_encoder is not None:
        text_encoder = accelerator.unwrap_model(models.text_encoder)
        state.text_encoder = get_peft_model_state_dict(text_encoder)
        state.text_encoder_config = text_encoder.peft_config["default"].to_dict()
    return state


def write_adapter(
    out_dir: Path, state: AdapterState, rank: int, alpha: float, metadata: dict[str, str]
) -> Path:
    """Write the diffusers-format LoRA and its kohya twin, both with provenance headers."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    te_state = state.text_encoder
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=convert_state_dict_to_diffusers(state.unet),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(te_state) if te_state else None,
        safe_serialization=True,
        unet_lora_adapter_metadata=state.unet_config,
        text_encoder_lora_adapter_metadata=state.text_encoder_config,
    )
    provenance = {f"charloop.{k}": v for k, v in metadata.items()}
    weights = out_dir / WEIGHTS_NAME
    canonicalize(weights, provenance)
    save_kohya(out_dir / KOHYA_WEIGHTS_NAME, state.unet, te_state, rank, alpha, provenance)
    atomic.write_json(out_dir / "provenance.json", metadata)
    return weights


def save_adapter(
    accelerator: Any, models: TrainModels, out_dir: Path, tp: TrainParams, metadata: dict[str, str]
) -> Path:
    """Write the trained LoRA of ``models`` in both formats (see ``write_adapter``)."""
    return write_adapter(out_dir, adapter_state(accelerator, models), tp.rank, tp.alpha, metadata)


@dataclass
class Fit:
    """One finished training: the models with their LoRA, the log and the split sizes."""

    models: TrainModels
    log: TrainLog
    images: int
    held_out: int


def fit(
    project: Project,
    pipe: Any,
    accelerator: Any,
    dataset_dir: Path,
    rows: list[dict[str, Any]],
    checkpoints: Checkpointer,
    stop_after: int | None = None,
) -> Fit:
    """Encode ``rows`` (through the cache) and train a fresh LoRA on them."""
    params = project.params
    tp = params.train
    base_ref = project.model_ref(params.base_model.path)
    identity = ModelIdentity(base_ref, params.base_model.revision)
    cache = EncodeCache(project.resolve(tp.cache_dir))
    train_rows, val_rows = split_validation(rows, tp.validation.images, tp.seed)
    encode: dict[str, Any] = dict(
        identity=identity, cache=cache, with_text_embeddings=not tp.train_text_encoder
    )
    data = encode_rows(pipe, dataset_dir, train_rows, params.generate.resolution, **encode)
    val = encode_rows(pipe, dataset_dir, val_rows, params.generate.resolution, **encode)
    logger.info("train: encode cache %d hits, %d misses", cache.hits, cache.misses)
    models = build_models(base_ref, params.base_model.revision, tp, accelerator)
    log = train_lora(accelerator, models, data, tp, val, checkpoints, stop_after)
    return Fit(models, log, len(data), len(val))


def run_train(
    project: Project,
    dataset: StageOutput,
    out_dir: str | Path,
    provenance: dict[str, Any],
    stop_after: int | None = None,
) -> StageOutput:
    """Train the LoRA on a captioned dataset folder (resuming from a checkpoint if any).

    A cast with ``cast.lora: per_character`` trains one LoRA per member instead (see
    :mod:`charloop.train_cast`).

    Args:
        project: Validated params and root.
        dataset: The caption stage's output.
        out_dir: Adapter folder, written atomically by the main process.
        provenance: Lineage facts stored in the headers and beside the weights.
        stop_after: Stop with TrainingInterrupted after this step (crash simulation).
    """
    params = project.params
    tp = params.train
    base_ref = project.model_ref(params.base_model.path)
    fp = fingerprint(
        "train",
        train=tp.model_dump(exclude={"cache_dir", "checkpoint_every"}),
        base=base_ref,
        resolution=params.generate.resolution,
        dataset=dataset.digest,
        provenance=provenance,
        cast=params.cast.model_dump(include={"lora", "adapter_weights"}) if params.cast else None,
    )
    out_dir = Path(out_dir)
    if done := completed(out_dir, fp):
        logger.info("train: reusing %s", out_dir)
        return done
    pipe = load_pipeline(base_ref, params.base_model)
    rows = read_rows(Path(dataset.path))
    accelerator = make_accelerator(tp, resolve_device(params.base_model.device))
    if params.cast is not None and params.cast.lora == "per_character":
        from charloop.train_cast import train_members

        return train_members(project, pipe, accelerator, dataset, rows, out_dir, fp, provenance)
    checkpoints = Checkpointer(checkpoint_root(out_dir, fp), tp.checkpoint_every)
    result = fit(project, pipe, accelerator, Path(dataset.path), rows, checkpoints, stop_after)
    if accelerator.is_main_process:
        output = _write(accelerator, result, out_dir, fp, tp, provenance)
        checkpoints.clear()
    accelerator.wait_for_everyone()
    return output if accelerator.is_main_process else read_output(out_dir)


def _write(
    accelerator: Any,
    result: Fit,
    out_dir: Path,
    fp: str,
    tp: TrainParams,
    provenance: dict[str, Any],
) -> StageOutput:
    with atomic.staged_dir(out_dir) as staging:
        metadata = {k: str(v) for k, v in provenance.items()}
        weights = save_adapter(accelerator, result.models, staging, tp, metadata)
        atomic.write_json(staging / TRAIN_LOG, log_record(result.log))
        summary = train_summary(result, accelerator.num_processes) | {
            "weights_sha256": sha256_file(weights),
            "kohya_sha256": sha256_file(staging / KOHYA_WEIGHTS_NAME),
        }
        output = seal("train", staging, out_dir, fp, summary)
    logger.info("train: %d steps, final loss %.4f", len(result.log.loss), summary["final_loss"])
    return output


def log_record(log: TrainLog) -> dict[str, Any]:
    """What ``train_log.json`` holds: loss, learning rate and validation loss per step."""
    return {
        "loss": log.loss,
        "learning_rate": log.learning_rate,
        "validation_loss": log.validation_loss,
    }


def train_summary(result: Fit, processes: int) -> dict[str, Any]:
    """The train stage's summary facts for one fit."""
    log = result.log
    return {
        "steps": len(log.loss),
        "final_loss": float(np.mean(log.loss[-5:])),
        "validation_loss": log.validation_loss[-1]["loss"] if log.validation_loss else None,
        "images": result.images,
        "validation_images": result.held_out,
        "processes": processes,
        "resumed_from": log.resumed_from,
    }
