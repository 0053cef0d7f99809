"""Train: a peft LoRA on the UNet (and optionally the text encoder), run through accelerate.

Latents and text embeddings come from an on-disk cache keyed by content (see
:mod:`charloop.encode_cache`), so a dataset image is VAE-encoded once across steps,
iterations and runs. Outputs: the diffusers-format LoRA, the same LoRA in kohya format,
``train_log.json`` (loss, learning rate and validation loss per step) and provenance.
Works under ``accelerate launch`` with several processes (only the main one writes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from charloop import atomic
from charloop.config import Project
from charloop.encode_cache import EncodeCache
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
    "TrainingDiverged",
    "build_models",
    "make_accelerator",
    "run_train",
    "save_adapter",
]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = ADAPTER_WEIGHTS


def save_adapter(
    accelerator: Any, models: TrainModels, out_dir: Path, tp: TrainParams, metadata: dict[str, str]
) -> Path:
    """Write the diffusers-format LoRA and its kohya twin, both with provenance headers."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = accelerator.unwrap_model(models.unet)
    unet_state = get_peft_model_state_dict(unet)
    te_state = None
    te_meta = None
    if models.text_encoder is not None:
        text_encoder = accelerator.unwrap_model(models.text_encoder)
        te_state = get_peft_model_state_dict(text_encoder)
        te_meta = text_encoder.peft_config["default"].to_dict()
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=convert_state_dict_to_diffusers(unet_state),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(te_state) if te_state else None,
        safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=te_meta,
    )
    provenance = {f"charloop.{k}": v for k, v in metadata.items()}
    weights = out_dir / WEIGHTS_NAME
    canonicalize(weights, provenance)
    save_kohya(out_dir / KOHYA_WEIGHTS_NAME, unet_state, te_state, tp.rank, tp.alpha, provenance)
    atomic.write_json(out_dir / "provenance.json", metadata)
    return weights


def run_train(
    project: Project,
    dataset: StageOutput,
    out_dir: str | Path,
    provenance: dict[str, Any],
    stop_after: int | None = None,
) -> StageOutput:
    """Train one LoRA on a captioned dataset folder (resuming from a checkpoint if any).

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
    )
    out_dir = Path(out_dir)
    if done := completed(out_dir, fp):
        logger.info("train: reusing %s", out_dir)
        return done
    pipe = load_pipeline(base_ref, params.base_model)
    identity = ModelIdentity(base_ref, params.base_model.revision)
    cache = EncodeCache(project.resolve(tp.cache_dir))
    train_rows, val_rows = split_validation(
        read_rows(Path(dataset.path)), tp.validation.images, tp.seed
    )
    encode: dict[str, Any] = dict(
        identity=identity, cache=cache, with_text_embeddings=not tp.train_text_encoder
    )
    data = encode_rows(pipe, Path(dataset.path), train_rows, params.generate.resolution, **encode)
    val = encode_rows(pipe, Path(dataset.path), val_rows, params.generate.resolution, **encode)
    logger.info("train: encode cache %d hits, %d misses", cache.hits, cache.misses)
    accelerator = make_accelerator(tp, resolve_device(params.base_model.device))
    models = build_models(base_ref, params.base_model.revision, tp, accelerator)
    checkpoints = Checkpointer(checkpoint_root(out_dir, fp), tp.checkpoint_every)
    log = train_lora(accelerator, models, data, tp, val, checkpoints, stop_after)
    if accelerator.is_main_process:
        output = _write(accelerator, models, out_dir, fp, tp, provenance, log, len(data), len(val))
        checkpoints.clear()
    accelerator.wait_for_everyone()
    return output if accelerator.is_main_process else read_output(out_dir)


def _write(
    accelerator: Any,
    models: TrainModels,
    out_dir: Path,
    fp: str,
    tp: TrainParams,
    provenance: dict[str, Any],
    log: TrainLog,
    images: int,
    held_out: int,
) -> StageOutput:
    with atomic.staged_dir(out_dir) as staging:
        metadata = {k: str(v) for k, v in provenance.items()}
        weights = save_adapter(accelerator, models, staging, tp, metadata)
        atomic.write_json(
            staging / "train_log.json",
            {
                "loss": log.loss,
                "learning_rate": log.learning_rate,
                "validation_loss": log.validation_loss,
            },
        )
        summary = {
            "steps": len(log.loss),
            "final_loss": float(np.mean(log.loss[-5:])),
            "validation_loss": log.validation_loss[-1]["loss"] if log.validation_loss else None,
            "images": images,
            "validation_images": held_out,
            "processes": accelerator.num_processes,
            "resumed_from": log.resumed_from,
            "weights_sha256": sha256_file(weights),
            "kohya_sha256": sha256_file(staging / KOHYA_WEIGHTS_NAME),
        }
        output = seal("train", staging, out_dir, fp, summary)
    logger.info("train: %d steps, final loss %.4f", len(log.loss), summary["final_loss"])
    return output
