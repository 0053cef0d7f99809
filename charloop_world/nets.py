"""Augmentation and saving shared by the world embedder and oracle builds.

The backbone, the preprocessing and the loader live with the product's world embedder
backend (:mod:`charloop.models.world_embedder`), which loads what these builds save.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from charloop.models.world_embedder import Backbone, images_to_tensor, load_state

__all__ = ["Backbone", "augment", "images_to_tensor", "load_state", "save_model"]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Robustness to generated pictures: shifts, scale, blur, down/up-sampling, noise, colour."""
    n = x.shape[0]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    # small shift and scale through an affine grid
    theta = torch.zeros(n, 2, 3)
    scale = 1 + (rand(n) - 0.5) * 0.16
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (rand(n, 2) - 0.5) * 0.16
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    # blur: mix with a box-blurred copy
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = (rand(n, 1, 1, 1) * 1.2).clamp(max=1.0) * (rand(n, 1, 1, 1) < 0.6)
    x = x * (1 - mix) + blurred * mix
    # low resolution (jpeg-ish loss of detail) for a quarter of the batch
    low = F.interpolate(F.interpolate(x, size=32, mode="area"), size=64, mode="bilinear")
    pick = (rand(n, 1, 1, 1) < 0.25).float()
    x = x * (1 - pick) + low * pick
    # colour: brightness, contrast, per-channel gain
    x = x * (1 + (rand(n, 1, 1, 1) - 0.5) * 0.3) + (rand(n, 1, 1, 1) - 0.5) * 0.2
    x = x * (1 + (rand(n, 3, 1, 1) - 0.5) * 0.1)
    # noise
    x = x + torch.randn(x.shape, generator=generator) * rand(n, 1, 1, 1) * 0.08
    return x.clamp(-1, 1)


def save_model(model: nn.Module, config: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (atomic renames)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = out / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, out / "model.safetensors")
    tmp_config = out / ".config.json.tmp"
    tmp_config.write_text(json.dumps(config, indent=1, sort_keys=True))
    os.replace(tmp_config, out / "config.json")
    return out
