"""Training settings of params.yaml: LoRA shape, optimisation, precision, caches, checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from charloop.params.base import StrictModel


class ValidationParams(StrictModel):
    """Deterministic validation loss on dataset images held out of training."""

    images: int = Field(default=2, ge=0)
    """How many dataset images to hold out (0 turns validation off); chosen by id hash."""
    every: int = Field(default=10, ge=1)
    """Compute the validation loss every this many optimizer steps (and after the last)."""
    timesteps: list[int] = [100, 400, 700, 900]
    """Fixed diffusion timesteps the loss averages over (same noise every time)."""
    hold_out_references: bool = True
    """Whether reference images may be held out like any dataset image (as before); false
    holds out generated images only (references only when too few are generated), so the
    LoRA trains on every reference (see docs/stages.md, 'Validation and the references')."""


class BucketParams(StrictModel):
    """Aspect-ratio buckets: each image trains at the size of its aspect ratio instead of
    a centre-cropped square (sd-scripts' bucketing, SDXL's multi-aspect training)."""

    enabled: Literal["auto", "on", "off"] = "auto"
    """'auto': on for families trained at many aspect ratios (SDXL), off for SD1.5."""
    step: int = Field(default=64, ge=8, multiple_of=8)
    """Bucket sides are multiples of this many pixels (sd-scripts' ``bucket_reso_steps``;
    keep it a multiple of the VAE factor times the UNet's downsampling, 32 for SD/SDXL)."""
    max_ratio: float = Field(default=2.0, ge=1.0)
    """Most elongated bucket allowed: long side / short side (the area stays about
    ``resolution`` squared)."""


class FlowParams(StrictModel):
    """Flow-matching training (FLUX): which noise levels the steps see, and the guidance
    input of a guidance-distilled base."""

    sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    """How sigmas are drawn: 'logit_normal' (SD3, Esser et al. 2024, its best-performing
    choice; sd-scripts' ``--timestep_sampling sigmoid``, diffusers' ``--weighting_scheme
    logit_normal``) or 'uniform' (diffusers' FLUX script default)."""
    logit_mean: float = 0.0
    """Mean of the logit-normal (SD3: 0)."""
    logit_std: float = Field(default=1.0, gt=0)
    """Standard deviation of the logit-normal (SD3: 1)."""
    shift: float = Field(default=1.0, gt=0)
    """Static timestep shift ``s' = shift s / (1 + (shift - 1) s)``: 1 leaves the sigmas
    alone (FLUX.1-dev shifts dynamically by resolution at sampling time, and diffusers'
    FLUX script trains unshifted); 3 is FLUX.1-schnell's static shift."""
    guidance: float = Field(default=1.0, ge=0)
    """Guidance input during training for guidance-distilled bases (FLUX.1-dev): 1, as
    ai-toolkit and sd-scripts recommend for LoRAs (diffusers' script uses 3.5)."""


class MemoryParams(StrictModel):
    """How a LoRA run fits a card's memory: the frozen denoiser's weight format, the
    optimizer, offloading and a budget, planned and checked before the first image is drawn
    (see docs/memory.md). Gradient checkpointing, part of every plan, stays
    ``train.gradient_checkpointing``. The defaults keep today's behaviour."""

    weights: Literal["unquantized", "fp8", "nf4"] = "unquantized"
    """Format of the frozen denoiser's Linear weights (the LoRA stays float32):
    'unquantized' keeps the mixed-precision dtype (bf16 on CUDA, float32 on CPU); 'fp8'
    stores them as float8 with a scale per row (torchao's float8 weight-only, ~1 byte per
    parameter, sd-scripts' ``--fp8_base``); 'nf4' as 4-bit NormalFloat in blocks of 64
    (bitsandbytes, ~0.56 byte per parameter, the QLoRA recipe). fp8 and nf4 need the
    ``lowmem`` extra."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """'adamw': torch's AdamW (two float32 states, 8 bytes per LoRA parameter);
    'adamw8bit': bitsandbytes' 8-bit AdamW (block-quantized states, ~2 bytes)."""
    offload_encoders: bool = True
    """Move the base pipeline (text encoders, VAE and its own denoiser copy) off the GPU
    once the dataset's latents and prompts are cached, before the LoRA trains (a no-op
    on CPU). Trained text encoders are separate copies and stay."""
    pipeline_offload: Literal["auto", "none", "model", "sequential"] = "auto"
    """Generation and evaluation pipelines on CUDA: 'model' keeps one component at a time
    on the GPU (diffusers' ``enable_model_cpu_offload``), 'sequential' one layer at a time
    (``enable_sequential_cpu_offload``, slowest); 'auto' picks from the plan ('none' when
    the whole pipeline fits, else 'model', else 'sequential'). Ignored on CPU."""
    budget_gb: float | None = Field(default=None, gt=0)
    """GiB the training run may use at its peak; null: the CUDA device's free memory (on
    CPU: no limit, the estimate is only printed). A plan estimated above it (plus a 10%
    margin for the estimate's error) is refused before any image is drawn."""
    auto: bool = False
    """Pick ``weights``, ``optimizer`` and ``train.gradient_checkpointing`` from the
    planner: the least-reduced plan that fits the budget or the CUDA device (on CPU
    without a budget: today's defaults). Settings you write yourself are kept."""


class TriggerEmbeddingParams(StrictModel):
    """Pivotal tuning: the trigger becomes new text-encoder tokens, trained with the LoRA.

    A LoRA alone binds the character to the trigger in the styles it was trained in; in an
    unseen style the words of that style win and traits drift. A trigger embedding carries
    the character through the text encoder instead, where styles compose as words do. It
    starts as the embedding of the character's traits in words (declared and discovered,
    see ``traits``) and is trained on the same data as the LoRA. The adapter folder gets
    ``trigger_embedding.safetensors`` (A1111/ComfyUI embedding format; charloop and
    diffusers load it with the LoRA, bound to the trigger phrase). SD1.5 and SDXL only:
    FLUX's T5 would read the new tokens as text."""

    enabled: bool = False
    """Train a trigger embedding with the LoRA."""
    init: Literal["traits", "trigger"] = "traits"
    """Starting point: 'traits' is every trait of the character in words (declared, then
    discovered; the description when there are none); 'trigger' is the trigger phrase
    itself (see ``vectors`` for how the text becomes vectors)."""
    learning_rate: float = Field(default=1e-3, gt=0)
    """AdamW learning rate of the embedding vectors (no weight decay)."""
    vectors: Literal["per_trait", "per_token"] = "per_trait"
    """How the starting text becomes vectors: 'per_trait' gives each comma-separated phrase
    one vector (the mean of its words' embeddings: a short trigger that leaves room for the
    rest of the prompt); 'per_token' gives every token its own (the words exactly, so the
    trigger starts as the whole description; on the world it drew more whole characters
    but followed the prompt's expression less, see docs/traits.md)."""
    max_vectors: int = Field(default=32, ge=1, le=64)
    """At most this many vectors: a longer starting text is cut."""
    free_vectors: int = Field(default=0, ge=0, le=8)
    """Vectors added after the starting text's, each starting as the trigger phrase's own
    embedding and never pulled (see ``pull``): room for what the words do not say, while
    the words' vectors stay near the words. 0: none."""
    pull: float = Field(default=0.0, ge=0, lt=1)
    """After each step, move the vectors this fraction of the way back to their starting
    text (weight decay toward the words instead of toward zero): a vector moves only as far
    as the data keeps pushing it, so traits the words already draw stay as words
    (``free_vectors`` are never pulled). 0: off.
    Measured on the world: it helps a character whose traits words draw (nova) and hurts
    one whose traits they do not (kira's eyes), see docs/world.md."""


class AugmentParams(StrictModel):
    """Zoomed and mirrored variants of the reference images (kohya's ``random_crop`` and
    ``flip_aug``), made once and VAE-encoded into the cache like the images themselves.

    The references are drawn ``caption.reference_repeats`` times an epoch, so their few
    framings are what a LoRA memorises; variants show the same character at other sizes
    and places. A reference's repeats are shared among it and its variants, so its weight
    in the dataset is unchanged.
    """

    variants: int = Field(default=0, ge=0, le=16)
    """Variants of each reference besides the original (0 turns augmentation off); at
    most its repeats minus one are used."""
    zoom: float = Field(default=1.25, ge=1.0, le=2.0)
    """Largest zoom-in: a variant is a random window of 1/zoom to all of the image's
    width and height (the image's own aspect ratio), scaled back to the training size."""
    flip: bool = False
    """Mirror every other variant left to right. Leave off for a character whose sides
    differ (a badge on one side, a parted fringe): the LoRA would learn both."""


class TrainParams(StrictModel):
    """LoRA training (peft + accelerate)."""

    rank: int = Field(default=4, ge=1)
    """LoRA rank."""
    alpha: float = Field(default=4.0, gt=0)
    """LoRA alpha; the effective scale is alpha / rank."""
    target_modules: list[str] | None = None
    """Denoiser module names that receive LoRA layers; null: the family's default (SD1.5 and
    SDXL: attention 'to_q', 'to_k', 'to_v', 'to_out.0', to which kohya's default set adds
    'proj_in', 'proj_out', 'ff.net.0.proj', 'ff.net.2'; FLUX: the attention of both streams
    and the single blocks, as diffusers' FLUX LoRA script trains)."""
    train_text_encoder: bool = False
    """Also train a LoRA on the text encoder's attention (q/k/v/out projections)."""
    text_encoder_learning_rate: float | None = Field(default=None, gt=0)
    """Learning rate of the text-encoder LoRA (default: ``learning_rate``)."""
    trigger_embedding: TriggerEmbeddingParams = TriggerEmbeddingParams()
    """Pivotal tuning: train the trigger as new text-encoder tokens beside the LoRA."""
    learning_rate: float = Field(default=1e-3, gt=0)
    """AdamW learning rate."""
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts"
    ] = "constant"
    """Learning-rate schedule (diffusers' get_scheduler)."""
    lr_warmup_steps: int = Field(default=0, ge=0)
    """Warm-up steps for schedules that have one."""
    max_train_steps: int = Field(default=40, ge=1)
    """Optimizer steps per iteration."""
    batch_size: int = Field(default=4, ge=1)
    """Images per micro-batch (per process)."""
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step."""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """'auto' is bf16 on CUDA devices that support it (else fp16) and full precision on CPU."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the denoiser (and text encoder when trained): keep only
    each block's input and recompute the rest in the backward pass (``memory.auto`` may
    turn it on when you leave it unset)."""
    attention: Literal["auto", "sdpa", "xformers"] = "auto"
    """'auto' uses xformers on CUDA when installed, else PyTorch SDPA."""
    min_snr_gamma: float | None = Field(default=5.0, gt=0)
    """Min-SNR loss weighting (Hang et al. 2023); null for the plain MSE loss."""
    noise_offset: float = Field(default=0.0, ge=0)
    """Offset noise strength (helps very dark/bright images); 0 turns it off."""
    checkpoint_every: int | None = Field(default=None, ge=1)
    """Save the full training state every N steps so an interrupted run resumes there."""
    cache_dir: str = ".charloop/cache"
    """On-disk cache of VAE latents and text embeddings, keyed by content hash, model and
    resolution (relative to the params file)."""
    validation: ValidationParams = ValidationParams()
    """Held-out validation loss."""
    flow: FlowParams = FlowParams()
    """Flow-matching settings (FLUX only)."""
    memory: MemoryParams = MemoryParams()
    """Memory plan: quantized frozen weights, 8-bit optimizer, offloading, budget."""
    buckets: BucketParams = BucketParams()
    """Aspect-ratio buckets (original size and crop go to SDXL's size conditioning)."""
    augment: AugmentParams = AugmentParams()
    """Zoomed (and mirrored) variants of the reference images."""
    seed: int = 0
    """Seed for LoRA init, data order, noise and timesteps."""
    candidates: int = Field(default=1, ge=1, le=8)
    """LoRAs trained per iteration on the same dataset, with seeds ``seed``, ``seed + 1``,
    ...; each is evaluated on the held-out contexts and the best by ``loop.metric`` becomes
    the iteration's adapter (the others stay under ``iter-NNN/candidates/``). On the same
    data the training seed alone moves the result far (see docs/stages.md, 'Several
    candidates per iteration'); each extra candidate costs one training and one
    evaluation."""
