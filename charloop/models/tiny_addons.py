"""Tiny optional add-on models built in code: an IP-Adapter and a BLIP captioner.

Like :mod:`charloop.tiny_models` they are the real classes at toy sizes, written in the
files layout the real checkpoints use (``h94/IP-Adapter``'s ``models/`` folder;
``Salesforce/blip-image-captioning-*``), so the loading code is the one real users run.
Tests build them into temporary folders; they are not part of the embedded default.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

IP_ADAPTER_WEIGHTS = "ip-adapter_tiny.safetensors"


def build_tiny_ip_adapter(out_dir: str | Path, base_dir: str | Path, seed: int = 0) -> Path:
    """An IP-Adapter (plain image-projection variant) for the SD1.5 or SDXL pipeline in
    ``base_dir`` (its UNet's cross-attention width and block channels).

    Writes ``<out_dir>/models/ip-adapter_tiny.safetensors`` with the original key layout
    (``image_proj.proj.*``, ``image_proj.norm.*``, ``ip_adapter.<n>.to_k_ip.weight``, where
    ``n`` counts attention processors and cross-attention ones are odd) and the CLIP image
    encoder in ``<out_dir>/models/image_encoder``.
    """
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet_config = UNet2DConditionModel.load_config(Path(base_dir) / "unet")
    unet = UNet2DConditionModel.from_config(unet_config)
    cross = int(unet.config.cross_attention_dim)
    embed_dim = 16
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=embed_dim,
        )
    )
    tokens = 4  # the plain IP-Adapter projects one image embedding into 4 context tokens
    tensors = {
        "image_proj.proj.weight": torch.randn(cross * tokens, embed_dim) * 0.2,
        "image_proj.proj.bias": torch.zeros(cross * tokens),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        hidden = _hidden_size(name, list(unet.config.block_out_channels))
        for proj in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{index}.{proj}.weight"] = torch.randn(hidden, cross) * 0.2
    folder = Path(out_dir) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / IP_ADAPTER_WEIGHTS))
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    logger.info("tiny IP-Adapter written to %s", folder)
    return Path(out_dir)


def _hidden_size(processor_name: str, block_out_channels: list[int]) -> int:
    """Channel width of the UNet block an attention processor belongs to."""
    if processor_name.startswith("mid_block"):
        return block_out_channels[-1]
    block = int(processor_name.split(".")[1])
    if processor_name.startswith("up_blocks"):
        return list(reversed(block_out_channels))[block]
    return block_out_channels[block]


CAPTION_WORDS = (
    "a picture of person character standing sitting in forest city beach bar with red blue "
    "green hair eyes smiling background painting sketch"
).split()


def build_tiny_blip(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny BLIP captioning model (BlipForConditionalGeneration) with its processor."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    torch.manual_seed(seed)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: i for i, token in enumerate([*specials, *dict.fromkeys(CAPTION_WORDS)])}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            encoder_hidden_size=32,
            max_position_embeddings=64,
            bos_token_id=vocab["[DEC]"],
            pad_token_id=vocab["[PAD]"],
            sep_token_id=vocab["[SEP]"],
            eos_token_id=vocab["[SEP]"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    logger.info("tiny BLIP captioner written to %s", out)
    return out
