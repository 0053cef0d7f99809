"""Tiny real models built in code: the embedded default when no hub is reachable.

They are the same classes as real SD1.5 and SDXL checkpoints and a real CLIP model (only smaller),
saved in diffusers/transformers format and loaded back through ``from_pretrained``, so
every stage exercises the code path a real checkpoint takes. Built deterministically
from a seed: ``charloop build-tiny-models`` recreates ``models/`` exactly.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PROMPT_WORDS = tuple(
    """
    a an the and with of in on at by for to from wearing holding standing sitting walking running
    jumping waving arms crossed looking viewer side back front portrait full body close up shot
    girl boy woman man person character hero knight wizard robot cat dog fox
    red orange yellow green blue purple pink white black gray grey brown silver gold golden teal
    hair eyes eye skin short long curly straight spiky ponytail braid bob twin tails bangs
    freckles scar glasses hat cap hood scarf cape cloak jacket coat hoodie dress skirt shirt
    armor uniform suit boots gloves backpack sword staff bag earrings necklace mask helmet
    smiling smile laughing sad angry surprised serious neutral determined shy sleepy crying
    flat colors color watercolor sketch pencil ink pixel art anime cartoon comic oil painting
    colours colors smiles eyes boots gloves stars glowing
    photo realistic cel shaded outlined lineart digital illustration style 3d render low poly
    forest spaceship bar beach city street desert mountain snow rain night day sunset cafe
    library castle classroom office kitchen park garden river lake ocean space station
    underwater cave village market rooftop field meadow temple ruins neon alley indoors outdoors
    background simple detailed lowres blurry deformed extra limbs watermark text signature
    bad anatomy worst quality high best masterpiece cropped jpeg artifacts ugly duplicate
    """.split()
)
"""Words that become single tokens in the tiny tokenizer; anything else splits into characters."""


def _bpe_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Byte-pair merges until every word is one token: the commonest adjacent pair first,
    ties broken by the pair itself, so the same words give the same merges in every process
    (the ``tokenizers`` trainer breaks ties by hash order, which changes run to run)."""
    pieces = re.findall(r"\w+|[^\w\s]+", " ".join(words))
    counts: dict[tuple[str, ...], int] = {}
    for piece in pieces:
        word = (*piece[:-1], piece[-1] + "</w>")
        counts[word] = counts.get(word, 0) + 1
    merges: list[tuple[str, str]] = []
    while True:
        pairs: dict[tuple[str, str], int] = {}
        for word, n in counts.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        counts = {_merge(word, best): n for word, n in counts.items()}


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def clip_vocab(
    words: tuple[str, ...] = PROMPT_WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level CLIP BPE vocab and merges, trained so ``words`` are whole tokens (any other
    word still tokenizes, through byte fallback). Deterministic: the same words give the
    same vocabulary in every process, so a resumed build's text encoder keeps its token ids."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = _bpe_merges(words)
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_tokenizer():  # -> CLIPTokenizer (transformers types are heavy to import at module load)
    """A CLIP tokenizer whose vocabulary is generated in code."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    # transformers 5 takes merge pairs as tuples; its annotation still says list[str].
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def tiny_vae(latent_channels: int = 4, **extra: object):  # -> AutoencoderKL
    """The tiny models' VAE: 4 levels (8x down), 64 px; ``extra`` sets the family's
    latent scale, shift and upcast flags."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        **extra,
    )


def build_tiny_sd15(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny SD1.5-architecture pipeline (64 px images, 8x8 latents).

    Args:
        out_dir: Destination folder (diffusers ``save_pretrained`` layout).
        seed: Seed for the random initialisation.
    """
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = tiny_vae()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
    logger.info("tiny SD1.5 pipeline written to %s", out)
    return out


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny SDXL-architecture pipeline (64 px images, 8x8 latents).

    The real SDXL layout at small widths: two CLIP text encoders (the second with a
    projection, whose pooled output feeds the added conditioning), a UNet whose first
    level has no attention, ``layers_per_block`` 2 and deeper transformer stacks further
    down, ``text_time`` added embeddings, and a VAE with SDXL's scaling factor that asks
    to be upcast from float16.
    """
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = _text_config(len(tokenizer))
    text_encoder = CLIPTextModel(config)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=2 * config.hidden_size,  # both encoders' hidden states
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=config.projection_dim + 6 * time_dim,
        norm_num_groups=8,
    )
    vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
    logger.info("tiny SDXL pipeline written to %s", out)
    return out


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny CLIPModel (text + vision towers) with its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text = _text_config(len(tokenizer)).to_dict()
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=64,
        patch_size=8,
        projection_dim=32,
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size=64)
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    logger.info("tiny CLIP model written to %s", out)
    return out
