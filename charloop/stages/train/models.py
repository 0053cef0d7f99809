"""Models for training: accelerate setup, precision, attention kernel, fresh LoRA layers."""

from __future__ import annotations

import logging
from typing import Any

import torch

from charloop.families.detect import (
    ResolvedBase,
    base_facts,
    check_prediction,
    resolve_family,
)
from charloop.families.quantize import is_prequantized
from charloop.params.train import TrainParams
from charloop.stages.train.loop import TEXT_ENCODER_TARGETS, TrainModels, lora_config
from charloop.stages.train.trigger_embedding import TriggerTokens, attach_vectors

logger = logging.getLogger(__name__)


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """'auto': bf16 on CUDA when supported, else fp16; full precision off CUDA."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_accelerator(tp: TrainParams, device: torch.device) -> Any:
    """The accelerate ``Accelerator`` for this process (CPU, one GPU, or a launched rank)."""
    from accelerate import Accelerator

    return Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=resolve_mixed_precision(tp.mixed_precision, device),
    )


def set_attention(unet: Any, choice: str, device: torch.device) -> str:
    """Pick the denoiser's attention kernel; returns the one in use."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if choice in ("auto", "xformers") and device.type == "cuda":
        try:
            unet.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as exc:  # not installed, or built for another torch
            if choice == "xformers":
                raise ValueError(
                    f"train.attention is 'xformers' but it is unusable: {exc}"
                ) from exc
    elif choice == "xformers":
        raise ValueError("train.attention 'xformers' needs a CUDA device; use 'auto' or 'sdpa'")
    if type(unet).__name__ == "UNet2DConditionModel":  # transformers keep their own (SDPA)
        unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"


def build_models(
    base_ref: str,
    revision: str | None,
    tp: TrainParams,
    accelerator: Any,
    base: ResolvedBase | None = None,
    trigger: TriggerTokens | None = None,
) -> TrainModels:
    """Fresh base weights with new LoRA layers (the frozen base in the mixed-precision dtype,
    its Linear weights in ``train.memory.weights`` format; the LoRA parameters in float32).

    Args:
        base_ref: The base model folder or hub id.
        revision: Hub revision.
        tp: Train params.
        accelerator: The process's ``Accelerator``.
        base: Family and noise-schedule facts; None reads them from the model's config.
        trigger: The trigger's new tokens (``train.trigger_embedding``): the text encoders
            load with trainable vectors for them.
    """
    from diffusers.training_utils import cast_training_params

    if base is None:
        base = ResolvedBase(resolve_family("auto", base_ref, revision),
                            check_prediction("auto", base_ref, revision),
                            base_facts(base_ref, revision).zero_terminal_snr)  # fmt: skip
    family = base.family
    device = accelerator.device
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    memory = tp.memory
    denoiser = family.load_denoiser(base_ref, revision, dtype, memory.weights, device)
    if not is_prequantized(denoiser):  # bitsandbytes already placed it on the GPU
        denoiser = denoiser.to(device)
    denoiser.requires_grad_(False)
    attention = set_attention(denoiser, tp.attention, device)
    torch.manual_seed(tp.seed)  # LoRA init draws from the global generator
    targets = tp.target_modules or list(family.default_targets)
    denoiser.add_adapter(lora_config(tp.rank, tp.alpha, targets))
    if tp.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    text_encoders: dict[str, Any] = {}
    if tp.train_text_encoder or trigger is not None:
        loaded = family.load_text_encoders(base_ref, revision, dtype)
        for name, encoder in zip(family.trained_text_encoders(), loaded, strict=True):
            encoder = encoder.to(device)
            encoder.requires_grad_(False)
            if trigger is not None:  # before LoRA: the vectors are no LoRA target
                tokenizer = family.tokenizers[family.text_encoders.index(name)]
                attach_vectors(encoder, trigger, tokenizer)
            if tp.train_text_encoder:
                add_lora(encoder, lora_config(tp.rank, tp.alpha, TEXT_ENCODER_TARGETS))
            if tp.gradient_checkpointing:
                encoder.gradient_checkpointing_enable()
            text_encoders[name] = encoder
    if dtype != torch.float32:
        cast_training_params([denoiser, *text_encoders.values()], dtype=torch.float32)
    logger.info(
        "train: %s, %s attention, mixed precision %s, %s weights, %s", family.name, attention,
        accelerator.mixed_precision, memory.weights, memory.optimizer,
    )  # fmt: skip
    objective = family.objective(base_ref, revision, base, tp)
    scheduler = getattr(objective, "scheduler", None)
    return TrainModels(
        denoiser=denoiser,
        noise_scheduler=scheduler,
        family=family,
        objective=objective,
        text_encoders=text_encoders,
        trigger=trigger,
    )


def add_lora(model: Any, config: Any) -> None:
    """Inject LoRA layers into a transformers model the way its ``add_adapter`` would.

    transformers 5 refuses ``add_adapter`` with the peft release pip offers here, so call
    peft directly and record the config where ``get_peft_model_state_dict`` looks for it.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model, adapter_name="default")
    model.peft_config = {"default": config}
