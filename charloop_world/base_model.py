"""The world base model: an SD1.5-family pipeline (64 px, 16x16x4 latents) built in code.

Same component classes as a real SD1.5 checkpoint folder, only small, so
``StableDiffusionPipeline.from_pretrained`` loads it. Training lives in
:mod:`charloop_world.train_base`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from charloop_world.tokenizer import MODEL_MAX_LENGTH, build_world_tokenizer

logger = logging.getLogger(__name__)

TEXT_HIDDEN = 128


def build_text_encoder(
    vocab_size: int, hidden: int = TEXT_HIDDEN, with_projection: bool = False
) -> Any:
    """A small CLIP text encoder (3 layers, 4 heads, MLP twice as wide): ``CLIPTextModel``
    (SD1.5's, FLUX's pooled one, SDXL's first) or ``CLIPTextModelWithProjection`` (SDXL's
    second)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=hidden,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def build_vae(latent_channels: int = 4, quant_conv: bool = True) -> Any:
    """An ``AutoencoderKL`` mapping 64x64x3 images to 16x16 latents (3 down blocks): 4
    channels with quant convs (SD1.5, SDXL), or 16 without (FLUX)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )


def build_unet(channels: tuple[int, int, int] = (48, 96, 96)) -> Any:
    """A small ``UNet2DConditionModel`` with cross-attention at 16x16 and 8x8."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def build_scheduler() -> Any:
    """The SD1.5 noise schedule (scaled linear betas, epsilon prediction) as a DDIM config."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def save_pipeline(pipe: Any, out_dir: str | Path, fp16: bool = True) -> Path:
    """Save in diffusers layout with safetensors (fp16 weights by default)."""
    out = Path(out_dir)
    if fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    if fp16:
        pipe.to(torch.float32)
    logger.info("world pipeline written to %s", out)
    return out


def new_components(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """Fresh ``(vae, text_encoder, tokenizer, unet)``."""
    torch.manual_seed(seed)
    tokenizer = build_world_tokenizer()
    return build_vae(), build_text_encoder(len(tokenizer)), tokenizer, build_unet()
