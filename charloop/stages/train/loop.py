"""The LoRA optimisation loop: accelerate, mixed precision, min-SNR, checkpoints, validation.

Everything random (data order, noise, timesteps) is drawn from one seeded CPU generator
whose state is checkpointed with the LoRA weights, optimizer and scheduler, so a resumed
run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from charloop.core.errors import CharloopError
from charloop.core.faults import failpoint
from charloop.core.progress import progress_bar
from charloop.families import ModelFamily, get_family
from charloop.families.objectives import DiffusionObjective, Objective
from charloop.params.train import TrainParams
from charloop.stages.train.buckets import next_batch
from charloop.stages.train.checkpoint import Checkpointer
from charloop.stages.train.data import EncodedDataset
from charloop.stages.train.trigger_embedding import pull_toward_start, vectors_of

logger = logging.getLogger(__name__)

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
VALIDATION_SEED_OFFSET = 7919


class TrainingDiverged(CharloopError, RuntimeError):
    """The loss became NaN or infinite; nothing from this run may be registered."""


class TrainingInterrupted(RuntimeError):
    """Raised by ``stop_after`` (tests and tools simulating a crash after a checkpoint)."""


@dataclass
class TrainModels:
    """What the loop optimises: the denoiser (a UNet, or a FLUX transformer), optionally the
    text encoders, and the training noise schedule.

    ``text_encoders`` maps the family's pipeline component names ('text_encoder',
    'text_encoder_2') to the encoders being trained; empty when they are frozen (their
    outputs then come from the cache).
    """

    denoiser: Any
    noise_scheduler: Any
    family: ModelFamily = field(default_factory=lambda: get_family("sd15"))
    objective: Objective = None  # type: ignore[assignment]  # set in __post_init__
    """Noise, target and loss (default: DDPM training with ``noise_scheduler``)."""
    text_encoders: dict[str, Any] = field(default_factory=dict)
    trigger: Any = None
    """The trigger's new tokens (``TriggerTokens``) when a trigger embedding is trained."""

    def __post_init__(self) -> None:
        if self.objective is None:
            self.objective = DiffusionObjective(self.noise_scheduler)

    def trained(self) -> list[Any]:
        """Every trained module: the denoiser, then the trained text encoders (LoRA layers
        and/or trigger vectors)."""
        return [self.denoiser, *self.text_encoders.values()]


@dataclass
class TrainLog:
    """Per-step record written to ``train_log.json``."""

    loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    validation_loss: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None


def lora_config(rank: int, alpha: float, targets: list[str]):  # -> peft.LoraConfig
    """A peft LoRA configuration (gaussian init, as diffusers' LoRA scripts use)."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft accepts float alphas
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )


def text_encoder_groups(models: TrainModels, tp: TrainParams) -> list[dict[str, Any]]:
    """Optimizer groups of the text encoders: LoRA layers at the text-encoder rate, trigger
    vectors at their own rate without weight decay (it would pull them toward zero)."""
    te_lr = tp.text_encoder_learning_rate or tp.learning_rate
    lora: list[torch.nn.Parameter] = []
    vectors: list[torch.nn.Parameter] = []
    for encoder in models.text_encoders.values():
        trigger = vectors_of(encoder)
        mine = trigger.vectors if trigger is not None else None
        for param in encoder.parameters():
            if param.requires_grad:
                (vectors if param is mine else lora).append(param)
    groups: list[dict[str, Any]] = []
    if lora:
        groups.append({"params": lora, "lr": te_lr})
    if vectors:
        rate = tp.trigger_embedding.learning_rate
        groups.append({"params": vectors, "lr": rate, "weight_decay": 0.0})
    return groups


def make_optimizer(groups: list[dict[str, Any]], tp: TrainParams) -> torch.optim.Optimizer:
    """AdamW over the LoRA parameter groups: torch's, or bitsandbytes' 8-bit one
    (``train.memory.optimizer``: block-quantized states, same defaults)."""
    if tp.memory.optimizer == "adamw8bit":
        from bitsandbytes.optim import AdamW8bit

        return AdamW8bit(groups, lr=tp.learning_rate)
    return torch.optim.AdamW(groups, lr=tp.learning_rate)


def denoising_loss(
    models: TrainModels,
    latents: torch.Tensor,
    cond: dict[str, Any],
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    min_snr_gamma: float | None,
) -> torch.Tensor:
    """The family objective's loss for a batch (``cond``: the denoiser's keyword inputs,
    ``ModelFamily.denoiser_inputs``)."""
    return models.objective.loss(models.denoiser, latents, cond, noise, timesteps, min_snr_gamma)


def conditioning(models: TrainModels, data: EncodedDataset, batch: list[int]) -> dict[str, Any]:
    """The denoiser's conditioning inputs for ``batch``: cached prompt embeddings, the
    trained text encoders' output where they are trained, and the crop facts."""
    device = next(models.denoiser.parameters()).device
    text = data.text_batch(batch, device)
    family = models.family
    if models.text_encoders:
        encoders = [models.text_encoders[name] for name in family.trained_text_encoders()]
        text = family.encode_trainable(encoders, [ids[batch] for ids in data.input_ids], text)
    assert text is not None, "prompts are cached unless the text encoders are trained"
    sizes = data.sizes[batch] if data.sizes is not None else None
    return family.denoiser_inputs(text, sizes)


@torch.no_grad()
def validation_loss(models: TrainModels, val: EncodedDataset, tp: TrainParams) -> float:
    """Plain MSE on held-out images at fixed timesteps with fixed noise: comparable
    across steps and across runs with the same validation set."""
    device = next(models.denoiser.parameters()).device
    total, count = 0.0, 0
    for index in range(len(val)):
        generator = torch.Generator("cpu").manual_seed(tp.seed + VALIDATION_SEED_OFFSET + index)
        latents = val.latent_batch([index])
        cond = conditioning(models, val, [index])
        for timestep in tp.validation.timesteps:
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.tensor([timestep])
            loss = denoising_loss(models, latents.to(device), cond, noise.to(device), t, None)
            total, count = total + loss.item(), count + 1
    return total / max(count, 1)


def train_lora(
    accelerator: Any,
    models: TrainModels,
    data: EncodedDataset,
    tp: TrainParams,
    val: EncodedDataset | None = None,
    checkpoints: Checkpointer | None = None,
    stop_after: int | None = None,
) -> TrainLog:
    """Optimise LoRA layers added to ``models`` in place.

    Args:
        accelerator: An ``accelerate.Accelerator`` (mixed precision, processes).
        models: The UNet (and text encoder) with LoRA adapters already added.
        data: Training inputs.
        tp: Train params.
        val: Held-out inputs for the validation loss, or None.
        checkpoints: Where to save and resume the training state, or None.
        stop_after: Raise TrainingInterrupted after this step (simulates a crash).

    Raises:
        TrainingDiverged: a step's loss was NaN or infinite.
    """
    from diffusers.optimization import get_scheduler

    trainable = [p for p in models.denoiser.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": trainable, "lr": tp.learning_rate}]
    groups += text_encoder_groups(models, tp)
    optimizer = make_optimizer(groups, tp)
    processes = accelerator.num_processes
    scheduler = get_scheduler(
        tp.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=tp.lr_warmup_steps * processes,
        num_training_steps=tp.max_train_steps * processes,
    )
    prepared = accelerator.prepare(*models.trained(), optimizer, scheduler)
    models.denoiser = prepared[0]
    for offset, name in enumerate(models.text_encoders, start=1):
        models.text_encoders[name] = prepared[offset]
    optimizer, scheduler = prepared[-2], prepared[-1]
    # Each process draws its own batches and noise; process 0 alone matches 1-process runs.
    generator = torch.Generator("cpu").manual_seed(tp.seed + 1_000_003 * accelerator.process_index)
    order: list[Any] = []
    log = TrainLog()
    start = 0
    if checkpoints is not None and (state := checkpoints.latest()) is not None:
        start = checkpoints.restore(state, accelerator, models, optimizer, scheduler)
        generator.set_state(state["generator"])
        order = list(state["order"])
        log = TrainLog(**state["log"])
        log.resumed_from = start
        logger.info("train: resumed from step %d", start)
    models.family.prepare_training_device(accelerator.device)
    if val is not None and len(val) and start == 0:
        log.validation_loss.append({"step": 0, "loss": _validate(models, val, tp)})
    device = accelerator.device
    pool = data.epoch_pool()
    for step in progress_bar(range(start, tp.max_train_steps), "train", unit="step"):
        models.denoiser.train()
        step_loss = 0.0
        for micro in range(tp.gradient_accumulation_steps):
            last = micro == tp.gradient_accumulation_steps - 1
            with accelerator.no_sync(models.denoiser) if not last else nullcontext():
                batch = next_batch(generator, order, tp.batch_size, pool, data.buckets)
                latents = data.latent_batch(batch)
                noise = torch.randn(latents.shape, generator=generator)
                if tp.noise_offset:
                    noise += tp.noise_offset * torch.randn(
                        (latents.shape[0], latents.shape[1], 1, 1), generator=generator
                    )
                timesteps = models.objective.sample_timesteps(len(batch), generator)
                with accelerator.autocast():
                    cond = conditioning(models, data, batch)
                    loss = denoising_loss(
                        models,
                        latents.to(device),
                        cond,
                        noise.to(device),
                        timesteps,
                        tp.min_snr_gamma,
                    )
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at step {step}; lower train.learning_rate "
                        "(or use mixed_precision: 'no' / 'bf16' if fp16 overflows)"
                    )
                accelerator.backward(loss / tp.gradient_accumulation_steps)
                step_loss += loss.item() / tp.gradient_accumulation_steps
        optimizer.step()
        pull_toward_start(models.text_encoders.values(), tp.trigger_embedding.pull)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log.loss.append(step_loss)
        log.learning_rate.append(float(scheduler.get_last_lr()[0]))
        done = step + 1
        if (
            val is not None
            and len(val)
            and (done % tp.validation.every == 0 or done == tp.max_train_steps)
        ):
            log.validation_loss.append({"step": done, "loss": _validate(models, val, tp)})
        if checkpoints is not None and checkpoints.due(done, tp.max_train_steps):
            checkpoints.save(
                done, accelerator, models, optimizer, scheduler, generator, order, asdict(log)
            )
            failpoint("train:after-checkpoint")
        if stop_after is not None and done >= stop_after:
            raise TrainingInterrupted(f"stopped after step {done}")
    return log


def _validate(models: TrainModels, val: EncodedDataset, tp: TrainParams) -> float:
    models.denoiser.eval()
    loss = validation_loss(models, val, tp)
    if not math.isfinite(loss):
        raise TrainingDiverged(f"validation loss is {loss}; lower train.learning_rate")
    return loss


def checkpoint_root(out_dir: Path, fingerprint: str) -> Path:
    """Checkpoints of one training configuration, beside (not inside) the output folder."""
    return out_dir.parent / f".{out_dir.name}.checkpoints" / fingerprint
