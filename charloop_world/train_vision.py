"""One multi-task training run that yields both the identity embedder and the oracle.

A shared :class:`~charloop_world.nets.Backbone` feeds (a) one classification head per
attribute (the oracle) and (b) a projection to an L2-normalised embedding trained as a
cosine classifier over character identities (CosFace), i.e. the embedder. Sharing the run
halves the CPU cost; the two models are saved separately.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charloop_world.attributes import ALL_VALUES
from charloop_world.dataset import WorldDataset, cached_dataset
from charloop_world.nets import Backbone, augment, images_to_tensor

logger = logging.getLogger(__name__)

WIDTH, FEATURES, DIM = 32, 256, 128


class JointNet(nn.Module):
    """Backbone + attribute heads + embedding projection (+ identity proxies)."""

    def __init__(self, n_identities: int):
        super().__init__()
        self.attributes = {name: list(values) for name, values in ALL_VALUES.items()}
        self.backbone = Backbone(WIDTH, FEATURES)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(FEATURES, len(v)) for name, v in self.attributes.items()}
        )
        self.project = nn.Linear(FEATURES, DIM)
        self.proxies = nn.Parameter(torch.randn(n_identities, DIM) * 0.1)

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Attribute logits and L2-normalised embeddings."""
        h = self.backbone(x)
        logits = {name: head(h) for name, head in self.heads.items()}
        return logits, F.normalize(self.project(h), dim=-1)

    def part(self, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The state entries under ``prefixes`` (e.g. the oracle's or the embedder's)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}


@dataclass
class JointRun:
    """A trained :class:`JointNet` with its training record."""

    net: JointNet
    steps: int
    seconds: float
    losses: list[float]
    images: int
    characters: int


def train_joint(
    data: WorldDataset,
    minutes: float,
    batch_size: int = 64,
    lr: float = 3e-3,
    scale: float = 16.0,
    margin: float = 0.2,
    id_weight: float = 1.0,
    seed: int = 0,
) -> JointRun:
    """Train on ``data`` (several renders per character) for ``minutes`` of wall time."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_ids = int(data.identity.max()) + 1
    net = JointNet(n_ids)
    labels = {name: torch.from_numpy(data.labels(name)) for name in net.attributes}
    ids = torch.from_numpy(data.identity)
    images = images_to_tensor(data.images)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    budget, start, step, losses, running = minutes * 60, time.time(), 0, [], 0.0
    net.train()
    while time.time() - start < budget:
        progress = (time.time() - start) / budget
        for group in opt.param_groups:
            warm = min(1.0, (step + 1) / 50)
            group["lr"] = lr * warm * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * progress)))
        index = torch.from_numpy(rng.integers(0, len(data), batch_size))
        logits, emb = net(augment(images[index], generator))
        attr_loss = torch.stack([F.cross_entropy(logits[n], labels[n][index]) for n in logits])
        cos = emb @ F.normalize(net.proxies, dim=-1).T
        target = ids[index]
        id_loss = F.cross_entropy(scale * (cos - margin * F.one_hot(target, n_ids)), target)
        loss = attr_loss.sum() + id_weight * id_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.item()
        step += 1
        if step % 50 == 0:
            losses.append(running / 50)
            logger.info(
                "vision step %d loss %.3f (id %.3f) %.0fs",
                step, running / 50, id_loss.item(), time.time() - start,
            )  # fmt: skip
            running = 0.0
    net.eval()
    seconds = time.time() - start
    logger.info("vision models trained %d steps in %.0f s", step, seconds)
    return JointRun(net, step, seconds, losses, len(data), n_ids)


def joint_run(cache_dir: str | Path, minutes: float, seed: int = 0) -> JointRun:
    """Train once and cache the result, so the embedder and oracle builds share a run."""
    cache = Path(cache_dir)
    path = cache / f"vision-s{seed}-{minutes:g}min.pt"
    data = cached_dataset(cache, 2500, 4, seed + 100)
    if path.exists():
        saved = torch.load(path, weights_only=True)
        net = JointNet(saved["characters"])
        net.load_state_dict(saved.pop("state"))
        return JointRun(net=net, **saved)
    run = train_joint(data, minutes, seed=seed)
    record = {k: v for k, v in run.__dict__.items() if k != "net"}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**record, "state": run.net.state_dict()}, tmp)
    tmp.replace(path)
    return run
