"""The tiny FLUX.1 model built in code: the real classes at toy widths.

``FluxPipeline`` with a ``FluxTransformer2DModel`` (double- and single-stream blocks,
rotary position ids, a guidance embedding as on the distilled dev model), a 16-channel VAE
with FLUX's latent shift and scale, the CLIP text encoder (pooled) and a T5 encoder whose
unigram tokenizer is generated in code (T5-XXL's sentencepiece model is not reachable).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from charloop.families.flux import T5_MAX_LENGTH
from charloop.models.tiny import PROMPT_WORDS, _text_config, build_tokenizer, tiny_vae

logger = logging.getLogger(__name__)



def build_t5_tokenizer(
    words: tuple[str, ...] = PROMPT_WORDS, max_length: int = T5_MAX_LENGTH
):  # -> T5TokenizerFast
    """A T5-style unigram tokenizer (``▁word`` pieces, ``</s>`` appended) over ``words``;
    other words fall back to single characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]  # lazy export

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + word, -1.0) for word in dict.fromkeys(words)]
    pieces += [(char, -5.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789,.-'()"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=max_length,
    )


def build_tiny_flux(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny FLUX.1-architecture pipeline (64 px images, 8x8 latents packed
    into 16 tokens of 2x2 patches)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip_tokenizer = build_tokenizer()
    clip_config = _text_config(len(clip_tokenizer))
    t5_tokenizer = build_t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
        )
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x a 2x2 patch
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # the T5 width
        pooled_projection_dim=clip_config.hidden_size,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    vae = tiny_vae(16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                   use_post_quant_conv=False)  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(clip_config),
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
    logger.info("tiny FLUX pipeline written to %s", out)
    return out
