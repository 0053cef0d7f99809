"""Train: a peft LoRA on the UNet attention projections, run through accelerate.

Latents and text embeddings are encoded once per training run (not once per step, as
naive loops do), then the UNet LoRA is optimised with the standard denoising loss.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from charloop import atomic
from charloop.config import Project
from charloop.hashing import sha256_file
from charloop.params import TrainParams
from charloop.pipeline import load_pipeline
from charloop.progress import progress_bar
from charloop.safetensors_header import canonicalize
from charloop.stage import StageOutput, completed, fingerprint, seal

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing from this run may be registered."""


@dataclass(frozen=True)
class EncodedDataset:
    """Cached model inputs: scaled VAE latents and text-encoder hidden states."""

    latents: torch.Tensor
    text_embeddings: torch.Tensor


def load_image_tensor(path: Path, resolution: int) -> torch.Tensor:
    """An RGB image resized and centre-cropped to ``resolution``, scaled to [-1, 1], CHW."""
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    scale = resolution / min(image.size)
    image = image.resize(
        (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def encode_text(pipe: Any, captions: list[str]) -> torch.Tensor:
    """Text-encoder hidden states for captions (padded to the tokenizer's max length)."""
    tokens = pipe.tokenizer(
        captions,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return pipe.text_encoder(tokens.input_ids.to(pipe.device))[0].float()


@torch.no_grad()
def encode_dataset(pipe: Any, dataset_dir: Path, resolution: int) -> EncodedDataset:
    """Encode every image (VAE latent mean x scaling factor) and caption of a dataset folder."""
    rows = atomic.read_jsonl(dataset_dir / "metadata.jsonl")
    latents = []
    for row in progress_bar(rows, "encode", unit="img"):
        pixels = load_image_tensor(dataset_dir / row["file_name"], resolution)
        pixels = pixels.unsqueeze(0).to(pipe.device, dtype=pipe.vae.dtype)
        latent = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        latents.append(latent.float().cpu())
    embeddings = encode_text(pipe, [row["text"] for row in rows]).cpu()
    return EncodedDataset(latents=torch.cat(latents), text_embeddings=embeddings)


def lora_config(tp: TrainParams):  # -> peft.LoraConfig
    """The peft LoRA configuration for the UNet."""
    from peft import LoraConfig

    return LoraConfig(
        r=tp.rank,
        lora_alpha=tp.alpha,  # type: ignore[arg-type]  # peft accepts float alphas
        init_lora_weights="gaussian",
        target_modules=list(tp.target_modules),
    )


def train_lora(
    unet: Any, noise_scheduler: Any, data: EncodedDataset, tp: TrainParams
) -> list[float]:
    """Optimise a fresh LoRA on ``unet`` in place; returns the loss of every step.

    Raises:
        TrainingDiverged: a step's loss was NaN or infinite.
    """
    from accelerate import Accelerator

    device = next(unet.parameters()).device
    accelerator = Accelerator(cpu=device.type == "cpu")
    torch.manual_seed(tp.seed)  # LoRA init is drawn from the global generator
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(tp))
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tp.learning_rate)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    unet.train()
    generator = torch.Generator("cpu").manual_seed(tp.seed)
    num_items = data.latents.shape[0]
    order: list[int] = []
    losses = []
    for step in progress_bar(range(tp.max_train_steps), "train", unit="step"):
        if len(order) < tp.batch_size:  # reshuffle each epoch, deterministically
            order += torch.randperm(num_items, generator=generator).tolist() * math.ceil(
                tp.batch_size / num_items
            )
        batch, order = order[: tp.batch_size], order[tp.batch_size :]
        latents = data.latents[batch]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=generator
        )
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = (
            noise_scheduler.get_velocity(latents, noise, timesteps)
            if noise_scheduler.config.prediction_type == "v_prediction"
            else noise
        )
        prediction = unet(
            noisy.to(device), timesteps.to(device), data.text_embeddings[batch].to(device)
        ).sample
        loss = F.mse_loss(prediction.float(), target.to(device).float())
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss.item()} at step {step}; lower train.learning_rate"
            )
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def save_adapter(unet: Any, out_dir: Path, metadata: dict[str, str]) -> Path:
    """Write the diffusers-format LoRA file that ``pipe.load_lora_weights`` loads.

    The header is made deterministic and carries ``metadata`` as ``charloop.*`` keys.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=state,
        safe_serialization=True,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    weights = out_dir / WEIGHTS_NAME
    canonicalize(weights, {f"charloop.{k}": v for k, v in metadata.items()})
    atomic.write_json(out_dir / "provenance.json", metadata)
    return weights


def run_train(
    project: Project, dataset: StageOutput, out_dir: str | Path, provenance: dict[str, Any]
) -> StageOutput:
    """Train one LoRA on a captioned dataset folder.

    Args:
        project: Validated params and root.
        dataset: The caption stage's output.
        out_dir: Adapter folder, written atomically.
        provenance: Lineage facts stored beside the weights (iteration, parent...).
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel

    params = project.params
    base_ref = project.model_ref(params.base_model.path)
    fp = fingerprint(
        "train",
        train=params.train.model_dump(),
        base=base_ref,
        resolution=params.generate.resolution,
        dataset=dataset.digest,
        provenance=provenance,
    )
    out_dir = Path(out_dir)
    if done := completed(out_dir, fp):
        logger.info("train: reusing %s", out_dir)
        return done
    pipe = load_pipeline(base_ref, params.base_model)
    data = encode_dataset(pipe, Path(dataset.path), params.generate.resolution)
    # A fresh float32 UNet: clean base weights and full-precision LoRA optimisation.
    unet = UNet2DConditionModel.from_pretrained(
        base_ref, subfolder="unet", revision=params.base_model.revision, torch_dtype=torch.float32
    ).to(pipe.device)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    losses = train_lora(unet, noise_scheduler, data, params.train)
    with atomic.staged_dir(out_dir) as staging:
        weights = save_adapter(unet, staging, {k: str(v) for k, v in provenance.items()})
        atomic.write_json(staging / "train_log.json", {"loss": losses})
        summary = {
            "steps": len(losses),
            "final_loss": float(np.mean(losses[-5:])),
            "images": int(data.latents.shape[0]),
            "weights_sha256": sha256_file(weights),
        }
        output = seal("train", staging, out_dir, fp, summary)
    logger.info("train: %d steps, final loss %.4f", len(losses), summary["final_loss"])
    return output
