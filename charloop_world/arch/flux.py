"""world-flux: ``FluxPipeline`` at the world's scale.

A ``FluxTransformer2DModel`` with double-stream (text and image apart) and single-stream
blocks and rotary position ids, trained by rectified flow on packed 2x2-patch tokens of a
16-channel VAE's latents (shifted by their mean and scaled, FLUX's ``shift_factor`` and
``scaling_factor``), conditioned on CLIP's pooled output and a T5 encoder's token
embeddings (a unigram tokenizer over the world's words, built in code). The loss is
charloop's own FLUX objective (logit-normal sigmas, shifted by 3 as FLUX.1's scheduler
is), so the model and the loop's LoRA training agree on what a timestep means; sampling is
diffusers' ``FlowMatchEulerDiscreteScheduler`` with the same static shift, an independent
check that the objective is right.

Guidance: trained from scratch with caption dropout, it is an undistilled model (like
FLUX.1-schnell, ``guidance_embeds=False``): classifier-free guidance is the pipeline's
``true_cfg_scale`` with an empty negative prompt, which charloop's FLUX family uses for
bases without a guidance embedding.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch

from charloop.families.flux import predict
from charloop.families.objectives import FlowMatchingObjective
from charloop.models.tiny import PROMPT_WORDS
from charloop.models.tiny_flux import build_t5_tokenizer
from charloop_world.arch.base import Batch, Components, WorldArch
from charloop_world.attributes import WORLD_WORDS
from charloop_world.base_model import build_text_encoder
from charloop_world.tokenizer import MODEL_MAX_LENGTH, build_world_tokenizer
from charloop_world.train_base import autocast

CLIP_WIDTH = 64
T5_WIDTH = 64
SHIFT = 3.0
OBJECTIVE = FlowMatchingObjective(predict=partial(predict, guidance=1.0), shift=SHIFT)


def _t5(vocab: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab,
            d_model=T5_WIDTH,
            d_kv=16,
            d_ff=2 * T5_WIDTH,
            num_layers=3,
            num_heads=4,
            relative_attention_num_buckets=16,
            feed_forward_proj="gated-gelu",
        )
    )


def build_transformer() -> Any:
    """FLUX.1's transformer at small widths: 2 double- and 4 single-stream blocks."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x a 2x2 patch
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    )


class Flux(WorldArch):
    """The world's FLUX."""

    family: ClassVar[str] = "flux"
    denoiser: ClassVar[str] = "transformer"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2")
    latent_channels: ClassVar[int] = 16
    quant_conv: ClassVar[bool] = False
    latent_shift: ClassVar[bool] = True
    objective_text: ClassVar[str] = "rectified flow (logit-normal sigmas shifted by 3)"
    target_text: ClassVar[str] = "velocity MSE"
    sampler_text: ClassVar[str] = "Flow-matching Euler, true CFG"
    description: ClassVar[str] = (
        "A small FLUX.1-architecture pipeline (diffusers format: AutoencoderKL with 16 latent "
        "channels, shift and scale factors; CLIPTextModel (pooled) + T5EncoderModel with a "
        "unigram tokenizer; FluxTransformer2DModel with double- and single-stream blocks; "
        "FlowMatchEulerDiscreteScheduler, static shift 3; no guidance embedding: true "
        "classifier-free guidance). 64x64 images, 16x16x16 latents packed into 64 tokens."
    )

    def new_components(self, seed: int) -> Components:
        torch.manual_seed(seed)
        clip_tokenizer = build_world_tokenizer()
        t5_tokenizer = build_t5_tokenizer(
            tuple(dict.fromkeys(WORLD_WORDS + PROMPT_WORDS)), MODEL_MAX_LENGTH
        )
        return {
            "vae": self.build_vae(),
            "text_encoder": build_text_encoder(len(clip_tokenizer), CLIP_WIDTH),
            "tokenizer": clip_tokenizer,
            "text_encoder_2": _t5(len(t5_tokenizer)),
            "tokenizer_2": t5_tokenizer,
            "transformer": build_transformer(),
        }

    def loss(
        self, components: Components, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        clip_ids, t5_ids = batch.ids
        latents = batch.latents
        with autocast(latents.device):
            pooled = components["text_encoder"](clip_ids, output_hidden_states=False).pooler_output
            hidden = components["text_encoder_2"](t5_ids)[0]
            cond = {"encoder_hidden_states": hidden, "pooled_projections": pooled}
            timesteps = OBJECTIVE.sample_timesteps(len(latents), generator).to(latents.device)
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            loss = OBJECTIVE.loss(components["transformer"], latents, cond, noise, timesteps, None)
        return loss, loss.detach()

    def scheduler(self) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(shift=SHIFT, use_dynamic_shifting=False)


ARCH = Flux()
