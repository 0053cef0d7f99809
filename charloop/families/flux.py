"""FLUX.1 (dev, schnell and their fine-tunes): a flow-matching transformer on packed latents.

- Prompts: CLIP ViT-L's pooled output (``pooled_projections``) and T5-XXL's token
  embeddings (``encoder_hidden_states``), both cached per caption. T5 is the largest model
  in the pipeline and is never trained, so it is never loaded for training: with
  ``train_text_encoder`` only CLIP gets LoRA layers and T5's part comes from the cache.
- Latents: 16 channels, shifted and scaled by the VAE's ``shift_factor``/``scaling_factor``
  (cached that way), packed into tokens of 2x2 patches with (0, row, column) position ids.
- Training: rectified flow (:class:`~charloop.families.objectives.FlowMatchingObjective`,
  settings in ``train.flow``); a guidance-distilled base (dev) gets ``train.flow.guidance``
  as its guidance input.
- Exports: the diffusers file (``transformer.`` / ``text_encoder.`` peft keys) and the kohya
  file in sd-scripts' names, q/k/v fused (:mod:`charloop.families.flux_names`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch

from charloop.families.base import ModelFamily, TextParts
from charloop.families.flux_names import kohya_flux
from charloop.families.objectives import FlowMatchingObjective, Objective


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens of 2x2 patches (diffusers' layout)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack` for latents of (``height``, ``width``)."""
    b, _, packed = tokens.shape
    c = packed // 4
    patches = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, c, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rotary position ids (0, row, column) of the packed latent tokens."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] += torch.arange(height // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] += torch.arange(width // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


T5_MAX_LENGTH = 512
"""FluxPipeline's default ``max_sequence_length`` (dev; schnell runs at 256)."""


def max_sequence_length(pipe: Any) -> int:
    """T5 tokens per prompt: the pipeline default, or less when the base's T5 tokenizer
    says so (a base trained on shorter prompts)."""
    return min(T5_MAX_LENGTH, int(pipe.tokenizer_2.model_max_length))


def predict(
    denoiser: Any, noisy: torch.Tensor, sigmas: torch.Tensor, cond: dict[str, Any], guidance: float
) -> torch.Tensor:
    """The transformer's velocity for noisy latents at ``sigmas``, in latent layout."""
    _, _, height, width = noisy.shape
    hidden = cond["encoder_hidden_states"]
    dtype = hidden.dtype
    scale = None
    config = getattr(denoiser, "module", denoiser).config  # unwrapped under DDP
    if config.guidance_embeds:  # guidance-distilled (dev): the guidance input
        scale = torch.full((noisy.shape[0],), guidance, device=noisy.device, dtype=dtype)
    out = denoiser(
        hidden_states=pack(noisy).to(dtype),
        timestep=sigmas.to(dtype),
        guidance=scale,
        pooled_projections=cond["pooled_projections"],
        encoder_hidden_states=hidden,
        txt_ids=torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=dtype),
        img_ids=image_ids(height, width, noisy.device, dtype),
        return_dict=False,
    )[0]
    return unpack(out, height, width)


class Flux(ModelFamily):
    """FLUX.1: ``FluxPipeline``, ``FluxControlNetPipeline``, a ``FluxTransformer2DModel``."""

    name: ClassVar[str] = "flux"
    pipeline_class: ClassVar[str] = "FluxPipeline"
    controlnet_pipeline_class: ClassVar[str] = "FluxControlNetPipeline"
    controlnet_model_class: ClassVar[str] = "FluxControlNetModel"
    control_image_kwarg: ClassVar[str] = "control_image"
    denoiser: ClassVar[tuple[str, str]] = ("transformer", "FluxTransformer2DModel")
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2")
    trainable_text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)  # CLIP, never T5
    kohya_text_prefixes: ClassVar[tuple[str, ...]] = ("lora_te1",)
    default_targets: ClassVar[tuple[str, ...]] = (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    )  # fmt: skip
    architecture: ClassVar[str] = "flux-1-dev/lora"
    base_version: ClassVar[str] = "flux1"
    invoke_base: ClassVar[str] = "flux"
    prediction_type: ClassVar[str | None] = "flow"
    default_buckets: ClassVar[bool] = True
    caches_frozen_text: ClassVar[bool] = True
    ip_adapter: ClassVar[bool] = False  # FLUX IP-Adapters (XLabs) are another format

    def prepare_training_device(self, device: torch.device) -> None:
        """Route bf16 matrix products through cuBLASLt on CUDA.

        With torch 2.11 (CUDA 13) on an H200, the backward pass of the double-stream
        blocks' attention failed in ``cublasGemmEx`` (CUBLAS_STATUS_EXECUTION_FAILED, then an
        illegal memory access) under bf16, for the world-size and the 12 B transformer
        alike. With cuBLASLt preferred the world-size one passed, as it did in fp32 or with
        the math attention kernel (``bench/gpu_flux_debug.py`` runs each variant in its own
        process); the 12 B one is still to be measured with it.
        """
        if device.type == "cuda":
            torch.backends.cuda.preferred_blas_library("cublaslt")

    def sampling_kwargs(self, pipe: Any, guidance: float) -> dict[str, Any]:
        """Distilled bases (dev) take guidance as an input; a base without a guidance
        embedding (undistilled, trained with caption dropout) gets true classifier-free
        guidance against the negative prompt (``true_cfg_scale``)."""
        kwargs: dict[str, Any] = {"max_sequence_length": max_sequence_length(pipe)}
        if pipe.transformer.config.guidance_embeds:
            return kwargs | {"guidance_scale": guidance}
        return kwargs | {"true_cfg_scale": guidance}

    @torch.no_grad()
    def encode_prompts(self, pipe: Any, captions: list[str]) -> TextParts:
        hidden, pooled, _ = pipe.encode_prompt(
            prompt=captions,
            prompt_2=None,
            device=pipe.device,
            num_images_per_prompt=1,
            max_sequence_length=max_sequence_length(pipe),
        )
        return {"hidden": hidden.float().cpu(), "pooled": pooled.float().cpu()}

    def encode_trainable(
        self, encoders: list[Any], ids: list[torch.Tensor], cached: TextParts | None
    ) -> TextParts:
        if cached is None:
            raise ValueError("FLUX trains CLIP only: T5's embeddings must come from the cache")
        (clip,), (token_ids,) = encoders, ids
        device = next(clip.parameters()).device
        pooled = clip(token_ids.to(device), output_hidden_states=False).pooler_output
        return {"hidden": cached["hidden"], "pooled": pooled}

    def denoiser_inputs(self, text: TextParts, sizes: torch.Tensor | None) -> dict[str, Any]:
        return {"encoder_hidden_states": text["hidden"], "pooled_projections": text["pooled"]}

    def objective(self, ref: str, revision: str | None, base: Any, tp: Any) -> Objective:
        flow = tp.flow
        return FlowMatchingObjective(
            predict=partial(predict, guidance=flow.guidance),
            sampling=flow.sampling,
            logit_mean=flow.logit_mean,
            logit_std=flow.logit_std,
            shift=flow.shift,
        )

    def kohya_denoiser(
        self, state: dict[str, torch.Tensor], config: dict[str, Any], alpha: float
    ) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None, float]]:
        return dict(kohya_flux(state, config, alpha))


FAMILY = Flux()
