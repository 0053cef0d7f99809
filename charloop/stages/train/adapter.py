"""A trained LoRA as state dicts, written as diffusers and kohya files with provenance.

Shared by the single-LoRA train stage and the per-character cast training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from charloop.core import atomic
from charloop.core.safetensors_header import canonicalize
from charloop.families import ModelFamily, family_of_pipe, get_family
from charloop.families.detect import resolve_base
from charloop.families.single_file import base_model_ref
from charloop.models.encode_cache import EncodeCache
from charloop.models.memory_budget import training_params
from charloop.models.pipeline import offload_pipeline
from charloop.params.project import Project
from charloop.params.train import TrainParams
from charloop.stages.layout import ADAPTER_WEIGHTS, PROVENANCE_FILE, PROVENANCE_PREFIX
from charloop.stages.train.augment import with_variants
from charloop.stages.train.buckets import bucket_sizes
from charloop.stages.train.checkpoint import Checkpointer
from charloop.stages.train.data import ModelIdentity, encode_rows, split_validation
from charloop.stages.train.images import Size
from charloop.stages.train.kohya import KOHYA_WEIGHTS_NAME, save_kohya, to_kohya
from charloop.stages.train.loop import TrainLog, TrainModels, train_lora
from charloop.stages.train.models import build_models
from charloop.stages.train.modelspec import BaseSpec, spec_keys
from charloop.stages.train.trigger_embedding import (
    save_trigger_embedding,
    trigger_tokens,
    vectors_of,
)

logger = logging.getLogger(__name__)

WEIGHTS_NAME = ADAPTER_WEIGHTS


@dataclass
class AdapterState:
    """A trained LoRA as peft state dicts (``<module>.lora_A.weight`` keys) and configs.

    ``text`` and ``text_configs`` are keyed by the family's text-encoder component names
    ('text_encoder', 'text_encoder_2'); ``denoiser_model_config`` is the base UNet's config
    (families whose kohya names follow the original UNet layout need it).
    """

    denoiser: dict[str, Any]
    denoiser_config: dict[str, Any]
    text: dict[str, dict[str, Any]] = field(default_factory=dict)
    text_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    family: str = "sd15"
    denoiser_model_config: dict[str, Any] = field(default_factory=dict)
    trigger_vectors: list[Any] = field(default_factory=list)
    """The trigger embedding's vectors per text encoder (empty: none trained)."""
    trigger: str = ""
    starting_text: str = ""


def adapter_state(accelerator: Any, models: TrainModels) -> AdapterState:
    """The LoRA layers of trained ``models``."""
    from peft.utils import get_peft_model_state_dict

    denoiser = accelerator.unwrap_model(models.denoiser)
    config = {k: v for k, v in denoiser.config.items() if k != "quantization_config"}
    state = AdapterState(
        get_peft_model_state_dict(denoiser),
        denoiser.peft_config["default"].to_dict(),
        family=models.family.name,
        denoiser_model_config=config,
    )
    for name, module in models.text_encoders.items():
        encoder = accelerator.unwrap_model(module)
        if (found := vectors_of(encoder)) is not None:
            state.trigger_vectors.append(found.vectors)
        if hasattr(encoder, "peft_config"):  # trigger vectors alone add no LoRA layers
            state.text[name] = get_peft_model_state_dict(encoder)
            state.text_configs[name] = encoder.peft_config["default"].to_dict()
    if state.trigger_vectors:
        state.trigger, state.starting_text = models.trigger.trigger, models.trigger.text
    return state


def write_adapter(
    out_dir: Path,
    state: AdapterState,
    rank: int,
    alpha: float,
    metadata: dict[str, str],
    spec: BaseSpec | None = None,
) -> Path:
    """Write the diffusers-format LoRA and its kohya twin, both with provenance headers.

    The diffusers file keeps peft's own key format (``lora_A``/``lora_B``) for every
    module: ``convert_state_dict_to_diffusers`` renames only attention modules, and a
    file that mixes the two formats loads only the attention part (diffusers picks the
    format from the first key), silently dropping ``proj_in``, ``ff.net...`` and the rest.
    """
    family = get_family(state.family)
    family.save_diffusers_lora(out_dir, state.denoiser, state.denoiser_config, state.text,
                               state.text_configs)  # fmt: skip
    provenance = {PROVENANCE_PREFIX + k: v for k, v in metadata.items()}
    if spec is not None:  # model-spec keys: what InvokeAI, A1111 and kohya tools display
        title = metadata.get("member") or metadata.get("character", "charloop LoRA")
        provenance |= spec_keys(spec, title, metadata.get("trigger", ""))
    weights = out_dir / WEIGHTS_NAME
    canonicalize(weights, provenance)
    tensors = to_kohya(state.denoiser, state.text, alpha, family, state.denoiser_model_config)
    save_kohya(out_dir / KOHYA_WEIGHTS_NAME, tensors, rank, alpha, provenance)
    if state.trigger_vectors:
        save_trigger_embedding(
            out_dir, state.family, state.trigger_vectors, state.trigger, state.starting_text
        )
    atomic.write_json(out_dir / PROVENANCE_FILE, metadata)
    return weights


def save_adapter(
    accelerator: Any,
    models: TrainModels,
    out_dir: Path,
    tp: TrainParams,
    metadata: dict[str, str],
    spec: BaseSpec | None = None,
) -> Path:
    """Write the trained LoRA of ``models`` in both formats (see ``write_adapter``)."""
    state = adapter_state(accelerator, models)
    return write_adapter(out_dir, state, tp.rank, tp.alpha, metadata, spec)


def base_spec(project: Project, pipe: Any) -> BaseSpec:
    """The model-spec facts of the project's base pipeline."""
    family = family_of_pipe(pipe)
    scheduler_says = str(pipe.scheduler.config.get("prediction_type", "epsilon"))
    prediction = family.prediction_type or scheduler_says
    return BaseSpec(
        project.params.generate.resolution,
        prediction,
        architecture=family.architecture,
        base_version=family.base_version,
    )


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
    base_ref = base_model_ref(project)
    identity = ModelIdentity(base_ref, params.base_model.revision)
    cache = EncodeCache(project.resolve(tp.cache_dir))
    train_rows, val_rows = split_validation(
        rows, tp.validation.images, tp.seed, tp.validation.hold_out_references
    )
    plain = len(train_rows)
    train_rows = with_variants(train_rows, tp.augment)  # validation sees the images as they are
    if len(train_rows) > plain:
        logger.info("train: %d zoomed variants of the references", len(train_rows) - plain)
    base = resolve_base(params.base_model, base_ref)
    trigger = None
    if tp.trigger_embedding.enabled:
        trigger = trigger_tokens(project, pipe, base.family)
        train_rows = [row | {"text": trigger.expand(row["text"])} for row in train_rows]
        val_rows = [row | {"text": trigger.expand(row["text"])} for row in val_rows]
    text_trained = tp.train_text_encoder or trigger is not None
    encode: dict[str, Any] = dict(
        identity=identity,
        cache=cache,
        with_text_embeddings=not text_trained or base.family.caches_frozen_text,
        buckets=training_buckets(tp, base.family, params.generate.resolution),
        tokenizers=trigger.tokenizer_view() if trigger else None,
    )
    data = encode_rows(pipe, dataset_dir, train_rows, params.generate.resolution, **encode)
    val = encode_rows(pipe, dataset_dir, val_rows, params.generate.resolution, **encode)
    logger.info("train: encode cache %d hits, %d misses", cache.hits, cache.misses)
    offload_pipeline(pipe, tp.memory.offload_encoders)  # the cache holds what it gave
    tp = training_params(params, base_ref, base.family, accelerator.device)
    models = build_models(base_ref, params.base_model.revision, tp, accelerator, base, trigger)
    log = train_lora(accelerator, models, data, tp, val, checkpoints, stop_after)
    return Fit(models, log, len(data), len(val))


def training_buckets(tp: TrainParams, family: ModelFamily, resolution: int) -> list[Size] | None:
    """The aspect-ratio bucket sizes to train at, or None for centre-cropped squares."""
    on = tp.buckets.enabled == "on" or (tp.buckets.enabled == "auto" and family.default_buckets)
    return bucket_sizes(resolution, tp.buckets.step, tp.buckets.max_ratio) if on else None


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
