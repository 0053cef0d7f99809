"""The memory planner: peak training memory of a LoRA run, estimated before it starts.

``estimate`` prices one plan (weight format, optimizer, gradient checkpointing) for a
family, resolution, batch, rank and LoRA targets from the configs alone
(:mod:`charloop.models.memory_sizes`)::

    total = frozen weights (by format) + dequantized-layer workspace
          + LoRA (float32 parameters and gradients, 8 bytes each) + optimizer states
          + activations (the per-block model) + step inputs
          + pipeline on the device (when it is not offloaded after caching)
          + CUDA context and workspace (CUDA only)

Weight formats: 'unquantized' is the mixed-precision dtype (2 bytes, or 4 in float32);
'fp8' 1 byte per Linear weight plus a float32 scale per row; 'nf4' half a byte plus a
float32 absmax per block of 64. Weights outside Linear layers (norms, convolutions,
biases) stay in the compute dtype. Optimizer states: AdamW 8 bytes per LoRA parameter,
bitsandbytes' AdamW8bit 2 bytes plus a float32 absmax per block of 256.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from charloop.models.memory_sizes import (
    DenoiserSize,
    TEXT_TOKENS,
    activation_bytes,
)

GIB = 2**30
CUDA_CONTEXT_GIB = 0.5
"""The CUDA context and kernels (outside ``torch.cuda.max_memory_allocated``)."""
CUDA_WORKSPACE_GIB = 0.25
"""cuBLAS/cuDNN workspaces and allocator slack."""
MARGIN = 0.10
"""A plan is refused only when its estimate exceeds the limit by more than this fraction
(the estimate's error; see docs/memory.md)."""
WEIGHT_BYTES = {"fp8": 1.0, "nf4": 0.5}
ABSMAX_BLOCK = {"nf4": 64}
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.0 + 2 * 4 / 256}


@dataclass(frozen=True)
class Plan:
    """The settings that decide a run's memory (``train.memory`` and checkpointing)."""

    weights: str = "unquantized"
    optimizer: str = "adamw"
    checkpointing: bool = False

    def label(self) -> str:
        ckpt = "+ckpt" if self.checkpointing else ""
        return f"{self.weights}/{self.optimizer}{ckpt}"

    def settings(self) -> dict[str, object]:
        """The params fields of this plan, by dotted name."""
        return {
            "train.memory.weights": self.weights,
            "train.memory.optimizer": self.optimizer,
            "train.gradient_checkpointing": self.checkpointing,
        }


LADDER: tuple[Plan, ...] = (
    Plan("unquantized", "adamw", False),
    Plan("unquantized", "adamw", True),
    Plan("unquantized", "adamw8bit", True),
    Plan("fp8", "adamw8bit", True),
    Plan("nf4", "adamw8bit", True),
)
"""Plans from the least reduced to the smallest; ``auto`` takes the first that fits."""


@dataclass(frozen=True)
class Workload:
    """What is trained, at which size, on which device kind."""

    size: DenoiserSize
    resolution: int
    batch: int
    rank: int
    targets: tuple[str, ...]
    compute_bytes: int = 2
    """2 under bf16/fp16 mixed precision (CUDA), 4 in float32 (CPU)."""
    cuda: bool = True
    vae_downsample: int = 8
    text_tokens: int | None = None
    text_encoder_params: int = 0
    """Trained text encoders (their weights stay on the device with their LoRA)."""
    text_lora_params: int = 0
    pipeline_params: int = 0
    """The base pipeline's weights, counted when they stay on the device while training."""


@dataclass(frozen=True)
class Estimate:
    """An estimate's parts in bytes, and the plan it prices."""

    plan: Plan
    weights: int
    lora: int
    optimizer: int
    activations: int
    other: int

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.optimizer + self.activations + self.other

    def gib(self) -> float:
        return self.total / GIB

    def line(self) -> str:
        """One line: the plan, each part and the total, in GiB."""
        parts = (("weights", self.weights), ("LoRA+grads", self.lora),
                 ("optimizer", self.optimizer), ("activations", self.activations),
                 ("other", self.other))  # fmt: skip
        text = ", ".join(f"{name} {value / GIB:.2f}" for name, value in parts)
        return f"{self.plan.label()}: {text}; total {self.gib():.2f} GiB"


def frozen_weight_bytes(size: DenoiserSize, weights: str, compute_bytes: int) -> int:
    """The frozen denoiser in ``weights`` format (plus the one-layer dequant workspace)."""
    other = size.other_params * compute_bytes
    if weights == "unquantized":
        return size.linear_params * compute_bytes + other
    linear = size.linear_params * WEIGHT_BYTES[weights]
    if weights == "fp8":
        linear += size.linear_rows * 4
    else:
        linear += size.linear_params / ABSMAX_BLOCK[weights] * 4
    return int(linear) + other + size.largest_linear * compute_bytes


def estimate(work: Workload, plan: Plan) -> Estimate:
    """Peak training memory of ``plan`` for ``work`` (see the module docstring)."""
    lora_params = work.size.lora_params(work.targets, work.rank) + work.text_lora_params
    activations = activation_bytes(
        work.size, work.resolution, work.batch, plan.checkpointing, work.compute_bytes,
        work.vae_downsample, work.text_tokens,
    )  # fmt: skip
    side = work.resolution // work.vae_downsample
    tokens = work.text_tokens or TEXT_TOKENS[work.size.family]
    config = work.size.config
    flux = work.size.family == "flux"
    width = int(config.get("joint_attention_dim" if flux else "cross_attention_dim") or 0)
    channels = int(config["in_channels"]) // (4 if flux else 1)  # FLUX packs 2x2 patches
    inputs = work.batch * 4 * (3 * channels * side * side + tokens * width)  # float32
    context = (CUDA_CONTEXT_GIB + CUDA_WORKSPACE_GIB) * GIB if work.cuda else 0
    encoders = (work.text_encoder_params + work.pipeline_params) * work.compute_bytes
    return Estimate(
        plan,
        weights=frozen_weight_bytes(work.size, plan.weights, work.compute_bytes) + encoders,
        lora=lora_params * 8,
        optimizer=int(lora_params * OPTIMIZER_BYTES[plan.optimizer]),
        activations=activations,
        other=int(inputs + context),
    )


def fits(value: Estimate, limit_gib: float, margin: float = 0.0) -> bool:
    return value.gib() <= limit_gib * (1 + margin)


def candidates(current: Plan, fixed: set[str]) -> list[Plan]:
    """The ladder's plans with the ``fixed`` settings of ``current`` ('weights',
    'optimizer', 'checkpointing') imposed, duplicates dropped, in ladder order."""
    plans = [replace(p, **{f: getattr(current, f) for f in fixed}) for p in LADDER]
    return list(dict.fromkeys(plans))


def choose(work: Workload, current: Plan, fixed: set[str], limit_gib: float) -> Estimate:
    """The least-reduced plan (keeping ``fixed`` settings) whose estimate fits
    ``limit_gib``; the smallest one when none does."""
    priced = [estimate(work, p) for p in candidates(current, fixed)]
    for value in priced:
        if fits(value, limit_gib):
            return value
    return min(priced, key=lambda e: e.total)


def smallest_fitting(work: Workload, current: Plan, limit_gib: float) -> Estimate | None:
    """The first ladder plan at least as reduced as ``current`` that fits, or None."""
    for plan in LADDER:
        reduced = replace(
            plan,
            weights=_stronger(plan.weights, current.weights, ("unquantized", "fp8", "nf4")),
            optimizer=_stronger(plan.optimizer, current.optimizer, ("adamw", "adamw8bit")),
            checkpointing=plan.checkpointing or current.checkpointing,
        )
        value = estimate(work, reduced)
        if reduced != current and fits(value, limit_gib):
            return value
    return None


def _stronger(a: str, b: str, order: tuple[str, ...]) -> str:
    return a if order.index(a) >= order.index(b) else b


def pipeline_offload(pipeline_bytes: int, largest_component: int, limit_gib: float) -> str:
    """'none' when the whole pipeline fits ``limit_gib`` with room to sample (25%),
    'model' when its largest component does, else 'sequential'."""
    room = limit_gib * GIB / 1.25
    if pipeline_bytes <= room:
        return "none"
    return "model" if largest_component <= room else "sequential"


TABLE_PLANS: tuple[Plan, ...] = (Plan("unquantized", "adamw", False), *LADDER[1:2],
                                 Plan("unquantized", "adamw8bit", True),
                                 Plan("fp8", "adamw", True), *LADDER[3:4],
                                 Plan("nf4", "adamw", True), *LADDER[4:])  # fmt: skip
"""The plans of the documented estimate table."""


def reference_table() -> str:
    """docs/memory.md's estimate table (GiB, CUDA, bf16; FLUX.1-dev and SDXL at 1024 px,
    SD1.5 at 512, batch 1, rank 16, the family's default LoRA targets)."""
    from charloop.families import get_family
    from charloop.models.memory_sizes import denoiser_size

    def name(plan: Plan) -> str:
        return plan.label().replace("unquantized", "bf16")

    rows = ["| plan | FLUX.1 1024 px | SDXL 1024 px | SD1.5 512 px |", "|---|---|---|---|"]
    works = [
        Workload(denoiser_size(f), res, 1, 16, get_family(f).default_targets)
        for f, res in (("flux", 1024), ("sdxl", 1024), ("sd15", 512))
    ]
    for plan in TABLE_PLANS:
        cells = [f"{estimate(work, plan).gib():.1f}" for work in works]
        rows.append(f"| {name(plan)} | {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"
