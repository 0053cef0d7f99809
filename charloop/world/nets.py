"""Small CNN backbone, augmentation and safetensors I/O shared by the embedder and oracle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


class Backbone(nn.Module):
    """Conv stages 64 -> 32 -> 16 -> 8 -> 4 px, then a linear layer to ``features``."""

    def __init__(self, width: int = 32, features: int = 256):
        super().__init__()

        def block(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
            padding = 1
            return [
                nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        w = width
        self.conv = nn.Sequential(
            *block(3, w, 4, 2),  # 32 px
            *block(w, w, 3, 1),
            *block(w, 2 * w, 3, 2),  # 16 px
            *block(2 * w, 2 * w, 3, 1),
            *block(2 * w, 4 * w, 3, 2),  # 8 px
            *block(4 * w, 4 * w, 3, 1),
            *block(4 * w, 4 * w, 3, 2),  # 4 px
        )
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.1), nn.Linear(4 * w * 16, features), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, 64, 64)`` in [-1, 1] -> ``(n, features)``."""
        return self.fc(self.conv(x))


def images_to_tensor(images: list[Image.Image] | np.ndarray) -> torch.Tensor:
    """PIL images (any size; resized to 64) or a uint8 array -> ``(n, 3, 64, 64)`` in [-1, 1]."""
    if isinstance(images, np.ndarray):
        array = images
    else:
        array = np.stack(
            [
                np.asarray(
                    image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
                    if image.size != (64, 64)
                    else image.convert("RGB")
                )
                for image in images
            ]
        )
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


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


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, config)`` from a folder written by :func:`save_model`."""
    from safetensors.torch import load_file

    folder = Path(path)
    config = json.loads((folder / "config.json").read_text())
    return load_file(str(folder / "model.safetensors")), config
