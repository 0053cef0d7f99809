"""The world identity embedder as a loadable model (``evaluate.embedder: {type: world}``).

The embedded default's identity embedder is a small CNN trained on the procedural world
(``charloop_world``; rebuilt with ``charloop world build embedder``). This module is all the
product needs to use it: the network's architecture, the image preprocessing and the
loader for its folder (``config.json`` + ``model.safetensors``). It never imports the world
package: the renderer and the training code stay there.
"""

from __future__ import annotations

import json
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


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, config)`` from a folder written by :func:`save_model`."""
    from safetensors.torch import load_file

    folder = Path(path)
    config = json.loads((folder / "config.json").read_text())
    return load_file(str(folder / "model.safetensors")), config


class EmbedNet(nn.Module):
    """Backbone -> linear embedding (L2-normalised by :meth:`embed`)."""

    def __init__(self, width: int = 32, features: int = 256, dim: int = 128):
        super().__init__()
        self.backbone = Backbone(width, features)
        self.project = nn.Linear(features, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings."""
        return self.project(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings."""
        return F.normalize(self.forward(x), dim=-1)


class WorldEmbedderBackend:
    """Embeds images with the world identity embedder (image-only: no text tower)."""

    def __init__(self, ref: str):
        state, config = load_state(ref)
        self.net = EmbedNet(config["width"], config["features"], config["dim"])
        self.net.load_state_dict(state)
        self.net.eval()

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """``(n, dim)`` float32 L2-normalised rows."""
        if not images:
            return np.zeros((0, self.net.project.out_features), dtype=np.float32)
        parts = [
            self.net.embed(images_to_tensor(images[i : i + 256])).numpy()
            for i in range(0, len(images), 256)
        ]
        return np.concatenate(parts).astype(np.float32)

    def embed_texts(self, texts: list[str]) -> None:
        """No text embedding: this backend is image-only."""
        del texts
        return None
